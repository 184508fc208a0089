-- Argo CD health of an Argo CD Application, for app-of-apps: Argo CD 1.8+ no longer assesses
-- child Applications, so without this script sync waves between them do not wait for the
-- KubeVision CRDs and operator to be healthy before the site's Cameras and Pipelines sync.
local hs = {}
hs.status = "Progressing"
hs.message = "waiting for the application's health"
if obj.status ~= nil and obj.status.health ~= nil and obj.status.health.status ~= nil then
  hs.status = obj.status.health.status
  hs.message = obj.status.health.message or ""
end
return hs
