-- A budget enforced by hooks, and every tool call logged.
--
-- after_llm_call adds up the tokens each model call used; before_llm_call cancels the next
-- call once the budget is spent (the hook is named "budget", so the job ends as
-- budget_exceeded, exit code 3, if the spell does not catch it). before_tool_call logs every
-- tool call to the event stream, whoever makes it.
--
--   llmspell run examples/spells/budget.lua -i budget=60

local budget = tonumber(Args.budget or "60")
local spent = 0
local calls = {}

Hook.register("after_llm_call", function(ctx)
  local usage = ctx.payload.usage
  spent = spent + usage.input_tokens + usage.output_tokens
end, {name = "meter"})

Hook.register("before_llm_call", function(ctx)
  if spent >= budget then
    return Hook.cancel(string.format("budget of %d tokens spent (%d used)", budget, spent))
  end
end, {name = "budget", priority = 100})

Hook.register("before_tool_call", function(ctx)
  table.insert(calls, ctx.payload.tool)
  Event.publish("spell.tool_logged", {tool = ctx.payload.tool, args = ctx.payload.arguments})
end, {name = "tool_log"})

local worker = Agent.new{name = "worker", model = "local:calc", tools = {"calculator"}}

local answers = {}
for i = 1, 10 do
  local ok, result = pcall(worker.run, worker, "Round " .. i .. ": what is 6 * 7?")
  if not ok then
    Log.warn("stopped", {round = i, reason = result})
    break
  end
  table.insert(answers, result.text)
end
return {rounds = #answers, spent = spent, tool_calls = calls}
