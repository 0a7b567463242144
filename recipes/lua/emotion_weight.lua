-- ECR's emotion-based item reweighting (ECR_REFERENCE.md §3.7, `--weighted_loss`
-- without `--use_sentiment`): w = sum over labels k of p_k * omega(label_k),
-- with the user's current emotion probabilities p_k.
--
-- When the turn carries no emotions (no emotion tagger ran, or every
-- probability is zero) the item falls back to the feedback mapping of
-- feedback.lua (liked 2.0, disliked 1.0, not said 0.5).
--
--   [stages.feedback]
--   use = "lua"
--   with = { script = "lua/emotion_weight.lua", hook = "weight" }

local OMEGA = {
  like = 2.0, happy = 2.0, curious = 1.5, grateful = 1.5, negative = 1.0,
  neutral = 0.5, nostalgia = 1.5, agreement = 1.5, surprise = 1.5,
}

local FALLBACK = { liked = 2.0, disliked = 1.0, not_said = 0.5 }

function weight(item, feedback, emotions)
  local w, mass = 0.0, 0.0
  for label, p in pairs(emotions) do
    local omega = OMEGA[label]
    if omega == nil then
      error("unknown emotion label " .. tostring(label))
    end
    w = w + p * omega
    mass = mass + p
  end
  if mass <= 0 then
    return FALLBACK[feedback] or 0.5
  end
  return w
end
