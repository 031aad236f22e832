-- Auto-routing of the PACS (Orthanc) to the imaging service.
-- Every study that becomes stable (no new instance for "StableAge" seconds) is sent by
-- C-STORE to the DicomModalities entry "spineimg". Studies holding only our own results
-- (SR, key images as secondary captures) are not routed back.
local ROUTED_MODALITIES = { CT = true, MR = true }

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local wanted = false
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality ~= nil and ROUTED_MODALITIES[modality] then
      wanted = true
    end
  end
  if wanted then
    -- One association for the whole study, as an Orthanc job (retried from the Jobs API).
    print('auto-routing study ' .. studyId .. ' to spineimg')
    RestApiPost('/modalities/spineimg/store',
                '{"Resources": ["' .. studyId .. '"], "Asynchronous": true}')
  end
end
