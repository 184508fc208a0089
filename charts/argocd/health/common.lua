-- Shared by the KubeVision health checks: the generator puts this in front of each of them in
-- argocd-cm.yaml, since Argo CD runs every script alone (no require, no string library).

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

local function verdict(status, text)
  return {status = status, message = text}
end

-- Progressing until the operator has reported on the object's current generation, else nil.
local function pending(obj, what)
  local status = obj.status
  if status == nil or status.observedGeneration == nil then
    return verdict("Progressing", "waiting for the operator to report the " .. what .. "'s status")
  end
  local ready = condition(status, "Ready")
  local observed = status.observedGeneration
  if ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < observed then
    observed = ready.observedGeneration
  end
  local generation = obj.metadata.generation
  if generation ~= nil and observed ~= generation then
    return verdict("Progressing", "waiting for the operator to observe generation "
      .. tostring(generation) .. " (status is for generation " .. tostring(observed) .. ")")
  end
  return nil
end

-- The verdict of the Degraded and Ready conditions, or nil once Ready is True: Ready=False is
-- Progressing for a reason in `waiting`, Healthy for one in `idle`, else Degraded.
local function by_conditions(status, what, waiting, idle)
  local degraded = condition(status, "Degraded")
  if degraded ~= nil and degraded.status == "True" then
    return verdict("Degraded", message(degraded, "the " .. what .. " is degraded"))
  end
  local ready = condition(status, "Ready")
  if ready == nil or ready.status == "Unknown" then
    return verdict("Progressing", message(ready, "waiting for the Ready condition"))
  end
  if ready.status == "True" then
    return nil
  end
  if waiting[ready.reason] then
    return verdict("Progressing", message(ready, ready.reason))
  end
  if idle[ready.reason] then
    return verdict("Healthy", message(ready, ready.reason))
  end
  return verdict("Degraded", message(ready, ready.reason))
end

