-- Argo CD health of a KubeVision Pipeline (kubevision.io/v1alpha1).
-- Progressing until the operator has reported on the current generation and every desired
-- worker replica is ready; Degraded when cameras cannot be served (Degraded=True: no matching
-- variant, no schedulable node, no capacity; or an invalid spec); Healthy when Ready=True, or
-- when no camera is selected (an idle Pipeline, like a Deployment scaled to zero).
-- Argo CD runs custom scripts without the string library: plain Lua 5.1-5.4 only.
local WAITING = {WorkersStarting = true}
local IDLE = {NoCameras = true}

local function condition(status, type_)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local hs = {}
local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report the pipeline's status"
  return hs
end
local ready = condition(status, "Ready")
local observed = status.observedGeneration
if ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < observed then
  observed = ready.observedGeneration
end
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(observed) .. ")"
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = message(degraded, "the pipeline is degraded")
  return hs
end
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = message(ready, "waiting for the Ready condition")
  return hs
end
if ready.status ~= "True" then
  if WAITING[ready.reason] then
    hs.status = "Progressing"
  elseif IDLE[ready.reason] then
    hs.status = "Healthy"
  else
    hs.status = "Degraded"
  end
  hs.message = message(ready, ready.reason)
  return hs
end

local desired = status.desiredReplicas or 0
local running = status.readyReplicas or 0
if running < desired then
  hs.status = "Progressing"
  hs.message = tostring(running) .. "/" .. tostring(desired) .. " worker replicas ready"
  return hs
end
hs.status = "Healthy"
hs.message = message(ready, "worker replicas ready")
local autoscaling = condition(status, "Autoscaling")
if autoscaling ~= nil and autoscaling.status == "False" then
  hs.message = hs.message .. "; autoscaling holds its last decision: "
    .. message(autoscaling, autoscaling.reason or "")
end
return hs
