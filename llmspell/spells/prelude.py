"""The Lua side of the globals: thin wrappers over the Python bridge functions.

Each global function calls one bridge function. A bridge that answers at once returns
`ok, value`; one that has to wait returns `ok, operation`, and the wrapper suspends the calling
coroutine until the driver resumes it with the result (see scheduler.py). A failure becomes a
Lua error at the spell's line, catchable with pcall. The bridge table (`B`) and the await
function reach this chunk as arguments: the spell never sees them.
"""

PRELUDE = r"""
local B, await_op, args = ...
local error, type, setmetatable, select = error, type, setmetatable, select

-- Level 3: the error points at the spell's line that called the global (check's caller is
-- the wrapper, the wrapper's caller is the spell). No tail calls below, so levels hold.
local function check(ok, value)
  if not ok then error(value, 3) end
  return value
end

local function wait(ok, op)
  if not ok then error(op, 3) end
  local done, value = await_op(op)
  if not done then error(value, 3) end
  return value
end

local function object(meta, ref)
  return setmetatable({__ref = ref.__ref, name = ref.name, kind = ref.kind}, meta)
end

-- Agent ---------------------------------------------------------------------------------
local AgentMeta = {}
AgentMeta.__index = AgentMeta
AgentMeta.__tostring = function(self) return "Agent(" .. self.name .. ")" end
Agent = {}
function Agent.new(spec)
  local ref = check(B.agent_new(spec))
  return object(AgentMeta, ref)
end
function Agent.template(template, spec)
  local ref = check(B.agent_template(template, spec or {}))
  return object(AgentMeta, ref)
end
function Agent.templates()
  local names = check(B.agent_templates())
  return names
end
function AgentMeta.run(self, input, opts)
  local result = wait(B.agent_run(self, input, opts or {}))
  return result
end
function AgentMeta.as_tool(self, opts)
  local ref = check(B.agent_as_tool(self, opts or {}))
  return ref
end
Agent.as_tool = AgentMeta.as_tool

-- Tool ----------------------------------------------------------------------------------
Tool = {}
function Tool.list(category)
  local tools = check(B.tool_list(category))
  return tools
end
function Tool.get(name)
  local tool = check(B.tool_get(name))
  return tool
end
function Tool.call(name, arguments)
  local result = wait(B.tool_call(name, arguments or {}))
  return result
end
function Tool.define(spec)
  local ref = check(B.tool_define(spec))
  return ref
end

-- Workflow and Pattern -------------------------------------------------------------------
local FlowMeta = {}
FlowMeta.__index = FlowMeta
FlowMeta.__tostring = function(self) return self.kind .. "(" .. self.name .. ")" end
function FlowMeta.run(self, input, opts)
  local result = wait(B.flow_run(self, input or "", opts or {}))
  return result
end
local function flow(kind)
  return function(spec)
    local ref = check(B.flow_new(kind, spec))
    return object(FlowMeta, ref)
  end
end
Workflow = {sequential = flow("sequential"), parallel = flow("parallel"),
            conditional = flow("conditional"), loop = flow("loop"),
            map_reduce = flow("map_reduce"), pipeline = flow("pipeline")}
Pattern = {delegation = flow("delegation"), swarm = flow("swarm"),
           consensus = flow("consensus")}

-- Hook ----------------------------------------------------------------------------------
local RegMeta = {}
RegMeta.__index = RegMeta
function RegMeta.remove(self) check(B.hook_remove(self)) end
Hook = {}
function Hook.register(point, fn, opts)
  local ref = check(B.hook_register(point, fn, opts or {}))
  return setmetatable(ref, RegMeta)
end
function Hook.points()
  local points = check(B.hook_points())
  return points
end
function Hook.continue() return {__hook = "continue"} end
function Hook.modify(value) return {__hook = "modify", value = value} end
function Hook.replace(value) return {__hook = "replace", value = value} end
function Hook.cancel(reason) return {__hook = "cancel", reason = reason or "cancelled"} end
function Hook.retry(after) return {__hook = "retry", after = after or 0} end
function Hook.redirect(target) return {__hook = "redirect", target = target} end

-- Event ---------------------------------------------------------------------------------
local SubMeta = {}
SubMeta.__index = SubMeta
function SubMeta.next(self, timeout)
  local event = wait(B.sub_next(self, timeout))
  return event
end
function SubMeta.iter(self, timeout)
  return function()
    local event = wait(B.sub_next(self, timeout))
    return event
  end
end
function SubMeta.close(self) wait(B.sub_close(self)) end
Event = {}
function Event.publish(topic, payload)
  wait(B.event_publish(topic, payload))
end
function Event.subscribe(pattern, opts)
  local ref = wait(B.event_subscribe(pattern, opts or {}))
  return setmetatable(ref, SubMeta)
end
function Event.on(pattern, fn, opts)
  local ref = wait(B.event_on(pattern, fn, opts or {}))
  return setmetatable(ref, SubMeta)
end

-- State ---------------------------------------------------------------------------------
State = {}
function State.get(key)
  local value = wait(B.state_get(key))
  return value
end
function State.get_versioned(key)
  local value = wait(B.state_get_versioned(key))
  return value
end
function State.set(key, value)
  local version = wait(B.state_set(key, value))
  return version
end
function State.compare_and_set(key, value, expected_version)
  local version = wait(B.state_cas(key, value, expected_version))
  return version
end
State.cas = State.compare_and_set
function State.delete(key)
  local done = wait(B.state_delete(key))
  return done
end
function State.list(prefix)
  local values = wait(B.state_list(prefix))
  return values
end

-- JSON, Log, Args, Spell -----------------------------------------------------------------
JSON = {}
function JSON.encode(value)
  local text = check(B.json_encode(value))
  return text
end
function JSON.decode(text)
  local value = check(B.json_decode(text))
  return value
end

Log = {}
for _, level in ipairs({"debug", "info", "warn", "error"}) do
  Log[level] = function(message, fields)
    check(B.log(level, message, fields))
  end
end

Args = args

Spell = {job_id = B.job_id}
function Spell.all(fns)
  local results = wait(B.spell_all(fns))
  return results
end
function Spell.clock()  -- seconds on a monotonic clock, to time things
  local now = check(B.spell_clock())
  return now
end
function Spell.sleep(seconds)
  wait(B.spell_sleep(seconds))
end
function Spell.timeout(seconds, fn)
  local value = wait(B.spell_timeout(seconds, fn))
  return value
end
"""
