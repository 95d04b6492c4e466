import { Notification } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { formatDuration, formatTokens, plural, runningFor } from './format';
import { IAgentsModel } from './model';
import { AgentSnapshot, RequestBody, streaming, totalTokens } from './protocol';

/** Poll when no snapshot came for this long (ms); the kernel normally pushes. */
const STALE_MS = 2000;

/** Send a cancel request and report what came of it; never throws. */
export async function sendCancel(
  model: IAgentsModel,
  body: RequestBody,
  what: string
): Promise<number | null> {
  try {
    const reply = await model.request(body);
    if (!reply.ok) {
      Notification.error(`Agents: could not cancel ${what}: ${reply.error ?? 'unknown error'}`, {
        autoClose: 8000
      });
      return null;
    }
    const count = reply.cancelled ?? 0;
    Notification.info(
      count === 0
        ? `Agents: nothing to cancel (${what} not running).`
        : `Agents: cancelled ${count} running turn${count === 1 ? '' : 's'}.`,
      { autoClose: 4000 }
    );
    return count;
  } catch (reason) {
    const message = reason instanceof Error ? reason.message : String(reason);
    Notification.error(`Agents: could not cancel ${what}: ${message}`, { autoClose: 8000 });
    return null;
  }
}

/** The left-sidebar panel: one row per agent of the current kernel, each with Cancel. */
export class AgentsPanel extends Widget {
  constructor(private readonly _model: IAgentsModel) {
    super();
    this.addClass('jp-agentrt-panel');
    this._model.changed.connect(this._onChanged, this);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._model.refresh();
    this._render();
    this._timer = setInterval(() => this._tick(), 1000);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._stopTimer();
  }

  dispose(): void {
    this._stopTimer();
    super.dispose();
  }

  private _stopTimer(): void {
    if (this._timer !== null) {
      clearInterval(this._timer);
      this._timer = null;
    }
  }

  private _onChanged(): void {
    if (this.isVisible) {
      this._render();
    }
  }

  /** Tick running times; poll only if the kernel stopped pushing. */
  private _tick(): void {
    const model = this._model;
    if (model.state === 'ready' && Date.now() - model.receivedAt > STALE_MS) {
      model.refresh();
    }
    if (streaming(model.agents).length > 0) {
      this._render();
    }
  }

  private _render(): void {
    const model = this._model;
    const node = this.node;
    node.replaceChildren();

    const header = document.createElement('header');
    header.className = 'jp-agentrt-header';
    const title = document.createElement('h2');
    title.textContent = 'Agents';
    header.append(title);
    node.append(header);

    if (model.state !== 'ready') {
      const note = document.createElement('p');
      note.className = 'jp-agentrt-note';
      note.textContent =
        model.notebookName === null
          ? 'Open a notebook to see its agents.'
          : model.state === 'connecting'
            ? `Connecting to the kernel of ${model.notebookName}…`
            : `No agentrt runtime in the kernel of ${model.notebookName}. ` +
              'Run %load_ext agentrt_jupyter in it.';
      node.append(note);
      return;
    }

    const agents = model.agents;
    const running = streaming(agents);
    const summary = document.createElement('p');
    summary.className = 'jp-agentrt-summary';
    summary.textContent =
      `${model.notebookName ?? ''}: ${agents.length} agent${agents.length === 1 ? '' : 's'}, ` +
      `${running.length} streaming, ${formatTokens(totalTokens(agents))} tokens`;
    const cancelAll = this._button('Cancel all', running.length === 0, () =>
      sendCancel(model, { kind: 'cancel_all' }, 'all turns')
    );
    cancelAll.classList.add('jp-agentrt-cancel-all');
    header.append(cancelAll);
    node.append(summary);

    if (model.error !== null) {
      const error = document.createElement('p');
      error.className = 'jp-agentrt-error';
      error.textContent = model.error;
      node.append(error);
    }

    if (agents.length === 0) {
      const note = document.createElement('p');
      note.className = 'jp-agentrt-note';
      note.textContent = 'No agents yet.';
      node.append(note);
      return;
    }

    // One card per agent: fits the narrow sidebar, where a 7-column table does not.
    const list = document.createElement('ul');
    list.className = 'jp-agentrt-list';
    for (const agent of agents) {
      list.append(this._card(agent));
    }
    node.append(list);
  }

  private _card(agent: AgentSnapshot): HTMLLIElement {
    const model = this._model;
    const active = agent.current_turn !== null;
    const card = document.createElement('li');
    card.className = 'jp-agentrt-agent';
    card.dataset.agent = agent.id;
    card.classList.toggle('jp-mod-streaming', active);

    const top = document.createElement('div');
    top.className = 'jp-agentrt-agent-top';
    const name = document.createElement('span');
    name.className = 'jp-agentrt-name';
    name.textContent = agent.name;
    const cancel = this._button('Cancel', !active, () =>
      sendCancel(model, { kind: 'cancel', agent: agent.id }, `agent ${agent.name}`)
    );
    cancel.title = `Cancel the running turn of ${agent.name}`;
    top.append(name, cancel);

    const modelLine = document.createElement('div');
    modelLine.className = 'jp-agentrt-model';
    modelLine.textContent = agent.model;

    const state = active
      ? `${agent.state} (turn ${agent.current_turn ?? ''}, ` +
        `${formatDuration(runningFor(agent, model.receivedAt))})`
      : agent.state;
    const facts = [
      state,
      ...(agent.queued > 0 ? [`${agent.queued} queued`] : []),
      plural(agent.turn_count, 'turn', 'turns'),
      `${formatTokens(agent.usage.total_tokens ?? 0)} tokens`
    ];
    const stats = document.createElement('div');
    stats.className = 'jp-agentrt-stats';
    stats.textContent = facts.join(' · ');

    card.append(top, modelLine, stats);
    return card;
  }

  private _button(
    label: string,
    disabled: boolean,
    onClick: () => Promise<unknown>
  ): HTMLButtonElement {
    const button = document.createElement('button');
    button.className = 'jp-Button jp-mod-styled jp-mod-warn jp-agentrt-button';
    button.textContent = label;
    button.disabled = disabled;
    button.addEventListener('click', () => {
      button.disabled = true;
      void onClick().finally(() => this._model.refresh());
    });
    return button;
  }

  private _timer: ReturnType<typeof setInterval> | null = null;
}
