-- Argo CD health of a KubeVision ModelVariant (kubevision.io/v1alpha1).
-- Progressing until the operator has reported on the current generation; Degraded when the
-- artifact failed its SHA-256 check (status.artifactVerified false), the spec was rejected or
-- Degraded=True; Healthy once Ready=True (Pipelines may choose the variant).
-- Argo CD runs custom scripts without the string library: plain Lua 5.1-5.4 only.
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
  hs.message = "waiting for the operator to report the model variant's status"
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

if status.artifactVerified == false then
  hs.status = "Degraded"
  hs.message = "the artifact does not match spec.artifact.sha256"
  return hs
end
local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = message(degraded, "the model variant is degraded")
  return hs
end
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = message(ready, "waiting for the Ready condition")
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = message(ready, ready.reason)
  return hs
end
hs.status = "Healthy"
hs.message = message(ready, "usable by Pipelines")
return hs
