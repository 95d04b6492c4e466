/**
 * The messages of the `agentrt-jupyter` comm, mirrored from
 * agentrt_jupyter/notebook/labcomm.py. Everything from the kernel arrives as
 * `unknown` and is narrowed here, field by field.
 */

export const COMM_TARGET = 'agentrt-jupyter';

/** How long a request may wait for its reply before the UI says so. */
export const REQUEST_TIMEOUT_MS = 5000;

export type RequestKind = 'list' | 'cancel' | 'cancel_all';

export type Request =
  | { id: string; kind: 'list' }
  | { id: string; kind: 'cancel'; agent: string }
  | { id: string; kind: 'cancel_all' };

/** A request before the connection gives it an id. */
export type RequestBody =
  | { kind: 'list' }
  | { kind: 'cancel'; agent: string }
  | { kind: 'cancel_all' };

export type ErrorCode =
  | 'bad_request'
  | 'no_runtime'
  | 'not_found'
  | 'timeout'
  | 'internal';

export interface IAgentSnapshot {
  id: string;
  name: string;
  model: string;
  state: string;
  turn_count: number;
  queued: number;
  current_turn: number | null;
  running_for: number | null;
  /** Token counts (total_tokens, prompt_tokens, ...). */
  usage: Record<string, number>;
}

export interface IReply {
  id: string;
  kind: 'reply';
  ok: boolean;
  agents?: IAgentSnapshot[];
  cancelled?: number;
  error?: string;
  code?: ErrorCode | string;
}

export interface ISnapshot {
  kind: 'snapshot';
  agents: IAgentSnapshot[];
}

export type KernelMessage = IReply | ISnapshot;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNumberOrNull(value: unknown): value is number | null {
  return value === null || typeof value === 'number';
}

function parseUsage(value: unknown): Record<string, number> | null {
  if (!isRecord(value)) {
    return null;
  }
  const usage: Record<string, number> = {};
  for (const [key, count] of Object.entries(value)) {
    if (typeof count !== 'number') {
      return null;
    }
    usage[key] = count;
  }
  return usage;
}

export function parseAgent(value: unknown): IAgentSnapshot | null {
  if (!isRecord(value)) {
    return null;
  }
  const {
    id,
    name,
    model,
    state,
    turn_count,
    queued,
    current_turn,
    running_for
  } = value;
  const usage = parseUsage(value.usage);
  if (
    typeof id !== 'string' ||
    typeof name !== 'string' ||
    typeof model !== 'string' ||
    typeof state !== 'string' ||
    typeof turn_count !== 'number' ||
    typeof queued !== 'number' ||
    !isNumberOrNull(current_turn) ||
    !isNumberOrNull(running_for) ||
    usage === null
  ) {
    return null;
  }
  return {
    id,
    name,
    model,
    state,
    turn_count,
    queued,
    current_turn,
    running_for,
    usage
  };
}

function parseAgents(value: unknown): IAgentSnapshot[] | null {
  if (!Array.isArray(value)) {
    return null;
  }
  const agents: IAgentSnapshot[] = [];
  for (const item of value) {
    const agent = parseAgent(item);
    if (agent === null) {
      return null;
    }
    agents.push(agent);
  }
  return agents;
}

/** A message from the kernel, or null if it does not match the protocol. */
export function parseKernelMessage(value: unknown): KernelMessage | null {
  if (!isRecord(value)) {
    return null;
  }
  if (value.kind === 'snapshot') {
    const agents = parseAgents(value.agents);
    return agents === null ? null : { kind: 'snapshot', agents };
  }
  if (value.kind !== 'reply') {
    return null;
  }
  if (typeof value.id !== 'string' || typeof value.ok !== 'boolean') {
    return null;
  }
  const reply: IReply = { id: value.id, kind: 'reply', ok: value.ok };
  if (value.agents !== undefined) {
    const agents = parseAgents(value.agents);
    if (agents === null) {
      return null;
    }
    reply.agents = agents;
  }
  if (typeof value.cancelled === 'number') {
    reply.cancelled = value.cancelled;
  }
  if (typeof value.error === 'string') {
    reply.error = value.error;
  }
  if (typeof value.code === 'string') {
    reply.code = value.code;
  }
  return reply;
}

/** Agents with a turn in progress. */
export function streaming(agents: readonly IAgentSnapshot[]): IAgentSnapshot[] {
  return agents.filter(agent => agent.current_turn !== null);
}

export function totalTokens(agents: readonly IAgentSnapshot[]): number {
  return agents.reduce((sum, agent) => sum + (agent.usage.total_tokens ?? 0), 0);
}
