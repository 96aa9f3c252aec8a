// kstatus prints what sigs.k8s.io/cli-utils' kstatus (the library Flux and kapply judge health with) computes for
// one object: JSON on stdin, JSON {status, message} on stdout.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	obj := &unstructured.Unstructured{}
	if err == nil {
		err = obj.UnmarshalJSON(data) // integers stay int64, as kstatus expects of metadata.generation
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the object:", err)
		os.Exit(2)
	}
	result, err := status.Compute(obj)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]string{"status": result.Status.String(), "message": result.Message}); err != nil {
		os.Exit(1)
	}
}
