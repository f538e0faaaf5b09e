-- Argo CD health check for Kubeforge objects (kubeforge.io/v1alpha1).
-- Source of truth: argocd/health.lua. argocd/render.py copies it to argocd/health/<kind>.lua and
-- into argocd/argocd-cm-resource-customizations.yaml; edit here and re-run the renderer.
--
-- Mapping (first match wins):
--   no status / status of an older generation        -> Progressing (operator has not caught up)
--   primary condition True                           -> Healthy   (Succeeded; Ready for ModelDeployment)
--     ... but Evaluation with Passed=False           -> Degraded  (thresholds not met: gates stay shut)
--   primary condition False, reason suspends         -> Suspended (e.g. GatePending, Suspended)
--   primary condition False, other reason            -> Degraded for bounded kinds (the Job failed);
--                                                       ModelDeployment: Degraded when the reason names a
--                                                       failure, else Progressing (rolling out, scaling)
--   DependenciesReady=False, reason suspends         -> Suspended
--   DependenciesReady=False, reason names a failure  -> Degraded  (an upstream object failed: never runs)
--   DependenciesReady=False, otherwise               -> Progressing (waiting for upstream objects)
--   anything else (Job created, running)             -> Progressing
local hs = {}

local SUSPEND_REASONS = {
  GatePending = true, WaitingForGate = true, Suspended = true, Paused = true, AwaitingApproval = true,
}

local function find(conditions, ctype)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == ctype then return c end
  end
  return nil
end

local function text(c, fallback)
  if c == nil then return fallback end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then return reason .. ": " .. message end
  if message ~= "" then return message end
  if reason ~= "" then return reason end
  return fallback
end

-- The operator's warning reasons (InvalidSpec, DependencyFailed, GateFailed, ConversionFailed,
-- BackoffLimitExceeded, DeadlineExceeded, NoResult, ...) and anything else that names a failure.
local FAILURE_WORDS = { "Fail", "Error", "Invalid", "Exceeded", "NoResult" }
local function names_failure(reason)
  if reason == nil then return false end
  for _, word in ipairs(FAILURE_WORDS) do
    if string.find(reason, word, 1, true) ~= nil then return true end
  end
  return false
end

local generation = nil
if obj.metadata ~= nil then generation = obj.metadata.generation end
local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kubeforge operator to reconcile this object"
  return hs
end
if status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kubeforge operator to report status.observedGeneration"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status describes " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local conditions = status.conditions
local primary_type = "Succeeded"
if obj.kind == "ModelDeployment" then primary_type = "Ready" end
local primary = find(conditions, primary_type)

if primary ~= nil and primary.observedGeneration ~= nil and generation ~= nil
    and primary.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = primary_type .. " condition is from generation " .. tostring(primary.observedGeneration)
    .. "; waiting for generation " .. tostring(generation)
  return hs
end

if primary ~= nil and primary.status == "True" then
  if obj.kind == "Evaluation" then
    local passed = find(conditions, "Passed")
    if passed ~= nil and passed.status == "False" then
      hs.status = "Degraded"
      hs.message = text(passed, "Evaluation thresholds not met")
      return hs
    end
  end
  hs.status = "Healthy"
  hs.message = text(primary, primary_type)
  return hs
end

if primary ~= nil and primary.status == "False" then
  if SUSPEND_REASONS[primary.reason or ""] then
    hs.status = "Suspended"
  elseif obj.kind ~= "ModelDeployment" or names_failure(primary.reason) then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = text(primary, primary_type .. " is False")
  return hs
end

local deps = find(conditions, "DependenciesReady")
if deps ~= nil and deps.status == "False" then
  if SUSPEND_REASONS[deps.reason or ""] then
    hs.status = "Suspended"
  elseif names_failure(deps.reason) then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = text(deps, "Waiting for dependencies")
  return hs
end

hs.status = "Progressing"
local job = find(conditions, "JobCreated")
if primary ~= nil then
  hs.message = text(primary, "Running")
elseif job ~= nil and job.status == "True" then
  hs.message = text(job, "Job created")
else
  hs.message = text(deps, "Reconciling")
end
return hs
