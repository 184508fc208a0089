-- Argo CD health of a KubeVision Pipeline (kubevision.io/v1alpha1), after common.lua.
-- Progressing until the operator has reported on the current generation and every desired
-- worker replica is ready; Degraded when cameras cannot be served (Degraded=True: no matching
-- variant, no schedulable node, no capacity; or an invalid spec); Healthy when Ready=True, or
-- when no camera is selected (an idle Pipeline, like a Deployment scaled to zero).
local early = pending(obj, "pipeline")
  or by_conditions(obj.status, "pipeline", {WorkersStarting = true}, {NoCameras = true})
if early ~= nil then
  return early
end
local status = obj.status
local desired = status.desiredReplicas or 0
local running = status.readyReplicas or 0
if running < desired then
  return verdict("Progressing",
    tostring(running) .. "/" .. tostring(desired) .. " worker replicas ready")
end
local hs = verdict("Healthy", message(condition(status, "Ready"), "worker replicas ready"))
local autoscaling = condition(status, "Autoscaling")
if autoscaling ~= nil and autoscaling.status == "False" then
  hs.message = hs.message .. "; autoscaling holds its last decision: "
    .. message(autoscaling, autoscaling.reason or "")
end
return hs
