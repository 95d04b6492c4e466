import { ISessionContext } from '@jupyterlab/apputils';
import {
  INotebookTracker,
  Notebook,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';
import { Kernel } from '@jupyterlab/services';
import { Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { AgentsConnection, ConnectionState } from './connection';
import { IAgentSnapshot, IReply, RequestBody } from './protocol';

/** The agents of the current notebook's kernel, shared by the status bar, command and panel. */
export interface IAgentsModel {
  /** `absent` also when no notebook is current. */
  readonly state: ConnectionState;
  readonly agents: readonly IAgentSnapshot[];
  readonly receivedAt: number;
  readonly error: string | null;
  /** The current notebook's title, for labels. */
  readonly notebookName: string | null;
  readonly changed: ISignal<IAgentsModel, void>;
  refresh(): void;
  request(body: RequestBody): Promise<IReply>;
}

export const IAgentsModel = new Token<IAgentsModel>(
  'agentrt-jupyter:IAgentsModel',
  "The agents of the current notebook's kernel."
);

/**
 * Follows the current notebook and its kernel; keeps one connection per kernel, so
 * switching tabs does not reopen comms.
 */
export class AgentsModel implements IAgentsModel {
  constructor(private readonly _tracker: INotebookTracker) {
    _tracker.currentChanged.connect(this._onCurrentChanged, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    this._onCurrentChanged();
  }

  get state(): ConnectionState {
    return this._connection?.state ?? 'absent';
  }

  get agents(): readonly IAgentSnapshot[] {
    return this._connection?.agents ?? [];
  }

  get receivedAt(): number {
    return this._connection?.receivedAt ?? 0;
  }

  get error(): string | null {
    return this._connection?.error ?? null;
  }

  get notebookName(): string | null {
    return this._panel?.title.label ?? null;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  refresh(): void {
    const connection = this._connection;
    if (connection === null) {
      return;
    }
    if (connection.state === 'absent') {
      connection.connect();
    } else {
      connection.refresh();
    }
  }

  request(body: RequestBody): Promise<IReply> {
    const connection = this._connection;
    if (connection === null) {
      return Promise.reject(new Error('No notebook with a kernel is open.'));
    }
    return connection.request(body);
  }

  private _onCurrentChanged(): void {
    const panel = this._tracker.currentWidget;
    if (panel === this._panel) {
      return;
    }
    this._panel?.sessionContext.kernelChanged.disconnect(this._onKernelChanged, this);
    this._panel = panel;
    panel?.sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    this._follow(panel?.sessionContext ?? null);
  }

  private _onKernelChanged(): void {
    this._follow(this._panel?.sessionContext ?? null);
  }

  /** Point at the connection of `context`'s kernel, making (and opening) it if needed. */
  private _follow(context: ISessionContext | null): void {
    const kernel = context?.session?.kernel ?? null;
    const connection = kernel === null ? null : this._connectionFor(kernel);
    if (connection !== this._connection) {
      this._connection?.changed.disconnect(this._emit, this);
      this._connection = connection;
      connection?.changed.connect(this._emit, this);
    }
    connection?.connect();
    this._emit();
  }

  private _connectionFor(kernel: Kernel.IKernelConnection): AgentsConnection {
    let connection = this._connections.get(kernel);
    if (connection === undefined || connection.isDisposed) {
      const made = new AgentsConnection(kernel);
      this._connections.set(kernel, made);
      kernel.disposed.connect(() => {
        this._connections.delete(kernel);
        made.dispose();
      });
      connection = made;
    }
    return connection;
  }

  /** A finished cell may have run `%load_ext agentrt_jupyter`: try again if absent. */
  private _onExecuted(_: unknown, args: { notebook: Notebook }): void {
    const panel = args.notebook.parent;
    if (!(panel instanceof NotebookPanel)) {
      return;
    }
    const kernel = panel.sessionContext.session?.kernel ?? null;
    if (kernel === null) {
      return;
    }
    const connection = this._connections.get(kernel);
    if (connection !== undefined && connection.state === 'absent') {
      connection.connect();
    } else if (connection === undefined && panel === this._panel) {
      this._follow(panel.sessionContext);
    }
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _panel: NotebookPanel | null = null;
  private _connection: AgentsConnection | null = null;
  private _connections = new Map<Kernel.IKernelConnection, AgentsConnection>();
  private _changed = new Signal<this, void>(this);
}
