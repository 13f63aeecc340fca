-- A parallel research fan-out: three researchers at once, then a writer, as one workflow.
-- A Lua hook on the workflow's steps logs each step and refuses any step named "publish".
--
--   llmspell run examples/spells/research.lua -i topic=Ray

local topic = Args.topic or "Ray"

local researchers = {}
for _, aspect in ipairs({"actors", "tasks", "objects"}) do
  researchers[aspect] = Agent.new{
    name = "research-" .. aspect,
    model = "local:researcher",
    instructions = "Find one fact about " .. topic .. " " .. aspect .. ".",
  }
end
local writer = Agent.new{name = "writer", model = "local:writer",
                         instructions = "Sum up the findings in one sentence."}

local steps_seen = {}
Hook.register("before_workflow_step", function(ctx)
  table.insert(steps_seen, ctx.payload.step)
  Log.info("step", {workflow = ctx.payload.workflow, step = ctx.payload.step})
  if ctx.payload.step == "publish" then return Hook.cancel("publishing is not allowed") end
end, {name = "step_log"})

local brief = Workflow.sequential{name = "brief", steps = {
  Workflow.parallel{name = "gather", branches = {
    actors = Workflow.sequential{name = "ask-actors", steps = {
      function() return topic .. " actors" end, researchers.actors}},
    tasks = Workflow.sequential{name = "ask-tasks", steps = {
      function() return topic .. " tasks" end, researchers.tasks}},
    objects = Workflow.sequential{name = "ask-objects", steps = {
      function() return topic .. " objects" end, researchers.objects}},
  }},
  function(findings)  -- the parallel output is a table: branch -> answer
    local lines = {}
    for _, aspect in ipairs({"actors", "tasks", "objects"}) do
      table.insert(lines, "- " .. tostring(JSON.decode(findings)[aspect]))
    end
    return table.concat(lines, "\n")
  end,
  writer,
}}

local result = brief:run(topic)
return {summary = result.text, steps = steps_seen}
