import { Kernel, KernelMessage as Jupyter } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  IAgentSnapshot,
  COMM_TARGET,
  IReply,
  Request,
  RequestBody,
  REQUEST_TIMEOUT_MS,
  parseKernelMessage
} from './protocol';

/**
 * - `connecting`: a comm open is on its way.
 * - `ready`: the kernel has an agentrt runtime and answers.
 * - `absent`: no runtime (the target is not registered, or the kernel closed the comm);
 *   `connect()` again after the next cell.
 */
export type ConnectionState = 'connecting' | 'ready' | 'absent';

/** A request that got no reply in time, or whose comm went away. */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly code: string
  ) {
    super(message);
  }
}

interface IPending {
  resolve: (reply: IReply) => void;
  reject: (error: RequestError) => void;
  timer: ReturnType<typeof setTimeout>;
}

let counter = 0;

/**
 * One comm to one kernel's agentrt runtime: typed requests with a timeout, and the
 * latest agent list (from replies or pushed snapshots).
 */
export class AgentsConnection implements IDisposable {
  constructor(readonly kernel: Kernel.IKernelConnection) {
    kernel.statusChanged.connect(this._onKernelStatus, this);
  }

  get state(): ConnectionState {
    return this._state;
  }

  /** The latest agents, or null before the first answer. */
  get agents(): IAgentSnapshot[] | null {
    return this._agents;
  }

  /** When `agents` arrived (ms since the epoch), to tick running times locally. */
  get receivedAt(): number {
    return this._receivedAt;
  }

  /** The last failure worth showing (a timeout, an error reply), cleared by success. */
  get error(): string | null {
    return this._error;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Open the comm unless one is open or opening. */
  connect(): void {
    if (this._disposed || this._comm !== null || this.kernel.isDisposed) {
      return;
    }
    if (!this.kernel.handleComms) {
      this._setState('absent');
      return;
    }
    const comm = this.kernel.createComm(COMM_TARGET);
    this._comm = comm;
    this._setState('connecting');
    comm.onMsg = msg => this._onMsg(comm, msg);
    comm.onClose = () => this._onClosed(comm);
    try {
      // A kernel that dies meanwhile rejects `done`; the status handler deals with that.
      comm.open({}).done.catch(() => undefined);
    } catch {
      this._onClosed(comm);
      return;
    }
    // The kernel also pushes a snapshot on open; the list reply confirms the runtime.
    this.refresh();
  }

  /** Ask for the agent list; failures are kept in `error`, never thrown. */
  refresh(): void {
    if (this._listing || this._comm === null) {
      return;
    }
    this._listing = true;
    this.request({ kind: 'list' })
      .catch(() => undefined)
      .finally(() => {
        this._listing = false;
      });
  }

  /**
   * Send a request; resolves with its reply (error replies included: check `ok`),
   * rejects with a RequestError after REQUEST_TIMEOUT_MS or when the comm closes.
   */
  request(body: RequestBody): Promise<IReply> {
    const comm = this._comm;
    if (comm === null || this._disposed) {
      return Promise.reject(
        new RequestError('No agentrt runtime in this kernel.', 'no_runtime')
      );
    }
    const id = `agentrt-${Date.now().toString(36)}-${++counter}`;
    const request: Request = { id, ...body };
    return new Promise<IReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        const error = new RequestError(
          `The kernel did not answer "${body.kind}" within ${REQUEST_TIMEOUT_MS / 1000} s ` +
            '(is a blocking cell running?).',
          'timeout'
        );
        this._setError(error.message);
        reject(error);
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(id, { resolve, reject, timer });
      try {
        comm.send({ ...request }).done.catch(() => undefined);
      } catch (reason) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new RequestError(`Could not send to the kernel: ${String(reason)}`, 'internal'));
      }
    });
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.kernel.statusChanged.disconnect(this._onKernelStatus, this);
    const comm = this._comm;
    this._comm = null;
    this._failPending('The connection to the kernel was closed.', 'no_runtime');
    if (comm !== null && !comm.isDisposed && !this.kernel.isDisposed) {
      try {
        comm.close().done.catch(() => undefined);
      } catch {
        // The kernel is already gone: nothing to close.
      }
    }
    Signal.clearData(this);
  }

  private _onMsg(comm: Kernel.IComm, msg: Jupyter.ICommMsgMsg): void {
    if (comm !== this._comm) {
      return;
    }
    const data: unknown = msg.content.data;
    const message = parseKernelMessage(data);
    if (message === null) {
      console.warn('agentrt-jupyter: ignoring a message that does not match the protocol', data);
      return;
    }
    if (message.kind === 'snapshot') {
      this._setAgents(message.agents);
      return;
    }
    const pending = this._pending.get(message.id);
    if (message.ok) {
      if (message.agents !== undefined) {
        this._setAgents(message.agents);
      } else if (this._error !== null) {
        this._setError(null);
      }
    } else if (message.code === 'no_runtime') {
      this._dropComm();
    } else {
      this._setError(message.error ?? 'The kernel reported an error.');
    }
    if (pending !== undefined) {
      clearTimeout(pending.timer);
      this._pending.delete(message.id);
      pending.resolve(message);
    }
  }

  private _setAgents(agents: IAgentSnapshot[]): void {
    this._agents = agents;
    this._receivedAt = Date.now();
    this._error = null;
    this._state = 'ready';
    this._changed.emit();
  }

  private _onClosed(comm: Kernel.IComm): void {
    if (comm === this._comm) {
      this._dropComm();
    }
  }

  /** The kernel has no runtime (now): forget the comm and say so. */
  private _dropComm(): void {
    const comm = this._comm;
    this._comm = null;
    this._agents = null;
    this._failPending('No agentrt runtime in this kernel.', 'no_runtime');
    if (comm !== null && !comm.isDisposed) {
      comm.dispose();
    }
    this._setState('absent');
  }

  private _onKernelStatus(_: Kernel.IKernelConnection, status: Jupyter.Status): void {
    // A restarted kernel has lost its runtime and comms; the next cell may bring them back.
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._dropComm();
    }
  }

  private _failPending(message: string, code: string): void {
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new RequestError(message, code));
    }
    this._pending.clear();
  }

  private _setState(state: ConnectionState): void {
    if (state !== this._state) {
      this._state = state;
      if (state !== 'ready') {
        this._error = null;
      }
      this._changed.emit();
    }
  }

  private _setError(error: string | null): void {
    this._error = error;
    this._changed.emit();
  }

  private _state: ConnectionState = 'absent';
  private _comm: Kernel.IComm | null = null;
  private _agents: IAgentSnapshot[] | null = null;
  private _receivedAt = 0;
  private _error: string | null = null;
  private _listing = false;
  private _disposed = false;
  private _pending = new Map<string, IPending>();
  private _changed = new Signal<this, void>(this);
}
