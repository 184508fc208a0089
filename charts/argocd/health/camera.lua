-- Argo CD health of a KubeVision Camera (kubevision.io/v1alpha1), after common.lua.
-- Suspended while spec.paused; Progressing until the operator has reported on the current
-- generation and a Pipeline's worker took the camera; Degraded when the camera cannot be
-- processed (invalid spec, Degraded=True, stream down); Healthy once Ready=True.
if obj.spec ~= nil and obj.spec.paused == true then
  return verdict("Suspended", "spec.paused is true: no worker processes this camera")
end
local early = pending(obj, "camera")
  or by_conditions(obj.status, "camera", {NoPipeline = true, AwaitingWorker = true}, {})
if early ~= nil then
  return early
end
local connected = condition(obj.status, "Connected")
if connected ~= nil and connected.status == "False" then
  return verdict("Degraded", message(connected, "the worker cannot read the stream"))
end
return verdict("Healthy", message(condition(obj.status, "Ready"), "processed by a worker"))
