-- Argo CD health of a KubeVision ModelVariant (kubevision.io/v1alpha1), after common.lua.
-- Progressing until the operator has reported on the current generation; Degraded when the
-- artifact failed its SHA-256 check (status.artifactVerified false), the spec was rejected or
-- Degraded=True; Healthy once Ready=True (Pipelines may choose the variant).
local early = pending(obj, "model variant")
if early ~= nil then
  return early
end
if obj.status.artifactVerified == false then
  return verdict("Degraded", "the artifact does not match spec.artifact.sha256")
end
early = by_conditions(obj.status, "model variant", {}, {})
if early ~= nil then
  return early
end
return verdict("Healthy", message(condition(obj.status, "Ready"), "usable by Pipelines"))
