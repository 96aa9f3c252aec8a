"""llmtraining_report.py: this folder goes on a program's PYTHONPATH (progress_receiver.REPORT_HELPER_DIR); the file imports nothing of ours."""
