-- A keyword emotion reader: writes user.emotions from cue words, so that a
-- recipe made only of Lua stages can chat (and as a template for run hooks).
--
--   [stages.mood]
--   use = "lua"
--   with = { script = "lua/mood.lua", reads = ["user.text"], writes = ["user.emotions"] }

local CUES = {
  like = { "love", "loved", "like", "liked", "favorite", "favourite", "enjoy", "enjoyed", "great", "awesome" },
  negative = { "hate", "hated", "boring", "awful", "terrible", "didn't like", "did not like", "worst", "sad" },
  grateful = { "thanks", "thank you", "thx", "appreciate" },
  curious = { "?", "any ", "what ", "recommend", "suggest", "looking for" },
  happy = { "fun", "happy", "glad", "laugh", ":)" },
  nostalgia = { "childhood", "as a kid", "growing up", "old days", "remember" },
  surprise = { "wow", "whoa", "surprised", "didn't expect", "never knew" },
  agreement = { "yes", "yeah", "sure", "sounds good", "agree", "ok" },
}

function run(turn)
  local text = " " .. string.lower(turn.user.text) .. " "
  local counts, total = {}, 0
  for label, words in pairs(CUES) do
    for _, w in ipairs(words) do
      if string.find(text, w, 1, true) then
        counts[label] = (counts[label] or 0) + 1
        total = total + 1
      end
    end
  end
  local emotions = {}
  if total == 0 then
    emotions.neutral = 1.0
  else
    for label, n in pairs(counts) do
      emotions[label] = n / total
    end
  end
  turn.user.emotions = emotions
end
