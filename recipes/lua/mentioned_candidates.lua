-- A stand-in recommender until ecr's neural recommender lands: the movies the
-- dialogue mentioned, most recent first (the user's own turn first), become
-- the candidates. It lets the retriever and the prompt builder run on real
-- dialogues; it recommends nothing new.
--
--   [stages.candidates]
--   use = "lua"
--   with = { script = "lua/mentioned_candidates.lua", reads = ["user.entities", "history"], writes = ["candidates"] }

function run(turn)
  local out, seen = {}, {}
  local function add(entities)
    for i = #(entities or {}), 1, -1 do
      local e = entities[i]
      if e.kind == "movie" and e.entity ~= nil and not seen[e.entity] then
        seen[e.entity] = true
        out[#out + 1] = { item = e.entity, name = e.name, score = 1.0 / (#out + 1) }
      end
    end
  end
  add(turn.user.entities)
  for i = #turn.history, 1, -1 do
    add(turn.history[i].entities)
  end
  turn.candidates = out
end
