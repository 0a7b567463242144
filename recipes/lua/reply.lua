-- A rule-based reply that mirrors the user's strongest emotion and keeps
-- count of the dialogue: the last stage of recipes/lua-chat.toml.
--
--   [stages.reply]
--   use = "lua"
--   with = { script = "lua/reply.lua", reads = ["history", "user.emotions"], writes = ["response"] }

local OPENERS = {
  like = "Glad you liked it!",
  negative = "Sorry that one didn't work for you.",
  grateful = "You're welcome!",
  curious = "Good question.",
  happy = "That sounds fun!",
  nostalgia = "Ah, the classics.",
  surprise = "Right? Surprising!",
  agreement = "Great, we agree.",
  neutral = "I see.",
}

function run(turn)
  local best, p = "neutral", -1
  for label, prob in pairs(turn.user.emotions or {}) do
    if prob > p or (prob == p and label < best) then
      best, p = label, prob
    end
  end
  local turns = math.floor(#turn.history / 2) + 1
  turn.response = string.format("%s (turn %d, you sound %s: %.0f%%)", OPENERS[best] or "I see.", turns, best, p * 100)
  -- Stream the reply word by word, as a generator would (`ecr chat` prints tokens as they arrive).
  local first = true
  for word in turn.response:gmatch("%S+") do
    emit("token", (first and "" or " ") .. word)
    first = false
  end
end
