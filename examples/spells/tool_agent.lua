-- A tool-using agent: a built-in tool (the calculator) and a tool written in Lua.
--
--   llmspell llm-server examples/spells/scenario.yaml --port 8765 &
--   LLMSPELL_LOCAL_LLM_URL=http://127.0.0.1:8765/v1 llmspell run examples/spells/tool_agent.lua \
--       -i question="What is 6 * 7?"

local units = Tool.define{
  name = "to_words",
  description = "Spell a whole number in English words (0 to 99).",
  parameters = {type = "object", properties = {n = {type = "integer"}}, required = {"n"}},
  fn = function(args)
    local ones = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    local tens = {"ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                  "ninety"}
    local n = args.n
    if n == 0 then return "zero" end
    local t, o = n // 10, n % 10
    local words = t > 0 and tens[t] or ""
    if o > 0 then words = words .. (t > 0 and "-" or "") .. ones[o] end
    return words
  end,
}

local maths = Agent.new{
  name = "maths",
  model = "local:maths",
  instructions = "Compute with the calculator, then spell the result with to_words.",
  tools = {"calculator", units},
}

local result = maths:run(Args.question or "What is 6 * 7?")
Log.info("answered", {turns = result.turns, tokens = result.usage.output_tokens})
return result.text
