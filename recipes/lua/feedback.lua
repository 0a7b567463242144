-- ECR's feedback-aware item reweighting m(f) (ECR_REFERENCE.md §3.7), with the
-- weights of the authors' README run: liked 2.0, disliked 1.0, not said 0.5.
--
-- Use it as a Lua stage with hook = "weight":
--   [stages.feedback]
--   use = "lua"
--   with = { script = "lua/feedback.lua", hook = "weight" }
--
-- weight(item, feedback, emotions) is called once per item the user gave
-- feedback on: item is the item's KG entity id, feedback is "liked",
-- "disliked" or "not_said", emotions maps ECR's emotion labels to the
-- probabilities of the user's current emotions (unused here).

local WEIGHTS = {
  liked = 2.0,
  disliked = 1.0,
  not_said = 0.5,
}

function weight(item, feedback, emotions)
  local w = WEIGHTS[feedback]
  if w == nil then
    error("unknown feedback " .. tostring(feedback) .. " for item " .. tostring(item))
  end
  return w
end
