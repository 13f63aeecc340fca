-- A consensus vote: four agents answer the same question; the majority decides, and the
-- dissent is reported.
--
--   llmspell run examples/spells/vote.lua -i question="Capital of France?"

local voters = {}
for i = 1, 4 do
  voters[i] = Agent.new{name = "voter-" .. i, model = "local:voter-" .. i,
                        instructions = "Answer with one word."}
end

local vote = Pattern.consensus{name = "vote", agents = voters, strategy = "majority"}
local result = vote:run(Args.question or "Capital of France?")
return {decision = result.decision, agreement = result.agreement, dissent = result.dissent}
