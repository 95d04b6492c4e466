import { IAgentSnapshot } from './protocol';

export function formatTokens(count: number | null | undefined): string {
  return count === null || count === undefined ? '—' : count.toLocaleString('en-US');
}

/** "12 s", "3 min 04 s", "1 h 02 min". */
export function formatDuration(seconds: number | null): string {
  if (seconds === null) {
    return '';
  }
  const whole = Math.max(0, Math.floor(seconds));
  if (whole < 60) {
    return `${whole} s`;
  }
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) {
    return `${minutes} min ${String(whole % 60).padStart(2, '0')} s`;
  }
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, '0')} min`;
}

/** The running time now, counting on from when the snapshot arrived. */
export function runningFor(agent: IAgentSnapshot, receivedAt: number): number | null {
  if (agent.running_for === null) {
    return null;
  }
  return agent.running_for + Math.max(0, Date.now() - receivedAt) / 1000;
}

export function plural(count: number, one: string, many: string): string {
  return `${count} ${count === 1 ? one : many}`;
}
