-- Auto-routing of the PACS (Orthanc) to the imaging service: the site's rule.
--
-- Post-operative lumbar CT and MR studies (told here by the study description; adapt
-- is_postop to the site's procedure codes) are sent by C-STORE to the DicomModalities
-- entry "spineimg" once stable (no new instance for StableAge seconds). The imaging
-- service fetches the pre-operative comparison itself, over DICOMweb.
--
-- A site that back-loads its archive into the PACS sets "SpineRouteSince" (YYYYMMDD) in the
-- Orthanc configuration: only studies acquired on or after that day are routed; the
-- retrospective cohort's older studies are pulled by the imaging service instead.
--
-- Only CT/MR series are sent, and each series once: a routed series is marked with the
-- "SpineRouted" metadata, so the SR the imaging service sends back (which makes the study
-- unstable, then stable again) is neither routed back nor causes the images to be resent.
local ROUTED_MODALITIES = { CT = true, MR = true }
local POSTOP_PATTERNS = { 'POST%s*%-?%s*OP', 'POSTOPERATIVE' }

local function is_postop(description)
  if description == nil then
    return false
  end
  local upper = string.upper(description)
  for _, pattern in ipairs(POSTOP_PATTERNS) do
    if string.find(upper, pattern) then
      return true
    end
  end
  return false
end

local function already_routed(seriesId)
  local names = ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata'))
  for _, name in ipairs(names) do
    if name == 'SpineRouted' then
      return true
    end
  end
  return false
end

local function recent_enough(studyDate)
  local since = GetOrthancConfiguration()['SpineRouteSince']
  if since == nil or studyDate == nil then
    return true
  end
  return studyDate >= since
end

function OnStableStudy(studyId, tags, metadata)
  if not is_postop(tags['StudyDescription']) or not recent_enough(tags['StudyDate']) then
    return
  end
  local resources = {}
  for _, s in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local modality = s['MainDicomTags']['Modality']
    if modality ~= nil and ROUTED_MODALITIES[modality] and not already_routed(s['ID']) then
      table.insert(resources, s['ID'])
    end
  end
  if #resources == 0 then
    return
  end
  -- One association for the whole study, as an Orthanc job (visible in the Jobs API).
  print('auto-routing ' .. #resources .. ' series of study ' .. studyId .. ' to spineimg')
  RestApiPost('/modalities/spineimg/store',
              DumpJson({ Resources = resources, Asynchronous = true }, true))
  for _, id in ipairs(resources) do
    RestApiPut('/series/' .. id .. '/metadata/SpineRouted', 'yes')
  end
end
