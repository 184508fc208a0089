-- Argo CD health of a KubeVision Camera (kubevision.io/v1alpha1).
-- Suspended while spec.paused; Progressing until the operator has reported on the current
-- generation and a Pipeline's worker took the camera; Degraded when the camera cannot be
-- processed (invalid spec, Degraded=True, stream down); Healthy once Ready=True.
-- Argo CD runs custom scripts without the string library: plain Lua 5.1-5.4 only.
local WAITING = {NoPipeline = true, AwaitingWorker = true}

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
if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "spec.paused is true: no worker processes this camera"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report the camera's status"
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
  hs.message = message(degraded, "the camera is degraded")
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
  else
    hs.status = "Degraded"
  end
  hs.message = message(ready, ready.reason)
  return hs
end

local connected = condition(status, "Connected")
if connected ~= nil and connected.status == "False" then
  hs.status = "Degraded"
  hs.message = message(connected, "the worker cannot read the stream")
  return hs
end
hs.status = "Healthy"
hs.message = message(ready, "processed by a worker")
return hs
