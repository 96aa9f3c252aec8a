-- Argo CD health check for llmtraining.dev/LLMTrainingJob: the phase, with the message of the condition that explains it
-- (the same reading as the kstatus conditions in docs/lifecycle.md). A running job is Healthy: a sync that waits on it
-- must not wait for days of training.
local hs = { status = "Progressing", message = "Waiting for the operator to observe the job" }
if obj.status == nil or obj.status.phase == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local function message_of(type_)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == type_ and c.message ~= nil and c.message ~= "" then
      return c.message
    end
  end
  return nil
end
local phase = obj.status.phase
local by_phase = {
  Pending = { "Progressing", "Reconciling" }, Created = { "Progressing", "Reconciling" },
  Restarting = { "Progressing", "Restarting" }, Running = { "Healthy", "Running" },
  Succeeded = { "Healthy", "Succeeded" }, Suspended = { "Suspended", "Suspended" }, Failed = { "Degraded", "Failed" },
}
local found = by_phase[phase]
if found == nil then
  hs.message = "Unknown phase " .. phase
  return hs
end
hs.status = found[1]
hs.message = message_of(found[2]) or message_of("Ready") or ("Phase " .. phase)
return hs
