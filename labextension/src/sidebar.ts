import { Notification } from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { formatDuration, formatTokens, plural, runningFor } from './format';
import { IAgentsModel } from './model';
import { IAgentSnapshot, RequestBody, streaming, totalTokens } from './protocol';

/** How often running times tick while a turn streams (ms); the kernel pushes the rest. */
const TICK_MS = 1000;

/** The key of the "Cancel all" request (agent ids key the others). */
const ALL = '*';

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

/** The elements of one agent's card, kept across updates. */
interface ICard {
  item: HTMLLIElement;
  name: HTMLSpanElement;
  cancel: HTMLButtonElement;
  model: HTMLDivElement;
  stats: HTMLDivElement;
}

/**
 * The left-sidebar panel: one card per agent of the current kernel, each with Cancel.
 *
 * The kernel pushes a snapshot after every change (up to 10 a second while a reply
 * streams), so the panel updates its elements in place: a button is never replaced
 * between the press and the release of a click.
 */
export class AgentsPanel extends Widget {
  constructor(private readonly _model: IAgentsModel) {
    super();
    this.addClass('jp-agentrt-panel');

    const header = document.createElement('header');
    header.className = 'jp-agentrt-header';
    const title = document.createElement('h2');
    title.textContent = 'Agents';
    this._cancelAll = this._button('Cancel all', ALL, () =>
      sendCancel(this._model, { kind: 'cancel_all' }, 'all turns')
    );
    this._cancelAll.classList.add('jp-agentrt-cancel-all');
    header.append(title, this._cancelAll);

    this._note.className = 'jp-agentrt-note';
    this._summary.className = 'jp-agentrt-summary';
    this._error.className = 'jp-agentrt-error';
    this._list.className = 'jp-agentrt-list';
    this.node.append(header, this._note, this._summary, this._error, this._list);
    this._model.changed.connect(this._onChanged, this);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._model.refresh();
    this._render();
    this._timer = setInterval(() => this._tick(), TICK_MS);
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

  /** Tick running times between snapshots (a hanging turn sends none). */
  private _tick(): void {
    if (streaming(this._model.agents).length > 0) {
      this._render();
    }
  }

  private _render(): void {
    const model = this._model;
    const ready = model.state === 'ready';
    const agents = ready ? model.agents : [];
    const running = streaming(agents);

    this._cancelAll.hidden = !ready;
    this._cancelAll.disabled = running.length === 0 || this._cancelling.has(ALL);
    show(this._note, this._noteText(agents.length));
    show(
      this._summary,
      ready
        ? `${model.notebookName ?? ''}: ${plural(agents.length, 'agent', 'agents')}, ` +
            `${running.length} streaming, ${formatTokens(totalTokens(agents))} tokens`
        : null
    );
    show(this._error, ready ? model.error : null);

    const seen = new Set<string>();
    let previous: HTMLLIElement | null = null;
    for (const agent of agents) {
      seen.add(agent.id);
      const card = this._cards.get(agent.id) ?? this._card(agent.id);
      this._update(card, agent);
      // Keep the kernel's order, moving only what moved.
      const expected: Element | null =
        previous === null ? this._list.firstElementChild : previous.nextElementSibling;
      if (expected !== card.item) {
        this._list.insertBefore(card.item, expected);
      }
      previous = card.item;
    }
    for (const [id, card] of this._cards) {
      if (!seen.has(id)) {
        card.item.remove();
        this._cards.delete(id);
      }
    }
  }

  private _noteText(count: number): string | null {
    const model = this._model;
    if (model.state === 'ready') {
      return count === 0 ? 'No agents yet.' : null;
    }
    if (model.notebookName === null) {
      return 'Open a notebook to see its agents.';
    }
    return model.state === 'connecting'
      ? `Connecting to the kernel of ${model.notebookName}…`
      : `No agentrt runtime in the kernel of ${model.notebookName}. ` +
          'Run %load_ext agentrt_jupyter in it.';
  }

  private _card(id: string): ICard {
    const item = document.createElement('li');
    item.className = 'jp-agentrt-agent';
    item.dataset.agent = id;
    const top = document.createElement('div');
    top.className = 'jp-agentrt-agent-top';
    const name = document.createElement('span');
    name.className = 'jp-agentrt-name';
    const model = document.createElement('div');
    model.className = 'jp-agentrt-model';
    const stats = document.createElement('div');
    stats.className = 'jp-agentrt-stats';
    const cancel = this._button('Cancel', id, () =>
      sendCancel(this._model, { kind: 'cancel', agent: id }, `agent ${name.textContent}`)
    );
    const card: ICard = { item, name, cancel, model, stats };
    top.append(name, cancel);
    item.append(top, model, stats);
    this._cards.set(id, card);
    return card;
  }

  private _update(card: ICard, agent: IAgentSnapshot): void {
    const active = agent.current_turn !== null;
    card.item.classList.toggle('jp-mod-streaming', active);
    setText(card.name, agent.name);
    card.cancel.disabled = !active || this._cancelling.has(agent.id);
    card.cancel.title = `Cancel the running turn of ${agent.name}`;
    setText(card.model, agent.model);
    const state = active
      ? `${agent.state} (turn ${agent.current_turn ?? ''}, ` +
        `${formatDuration(runningFor(agent, this._model.receivedAt))})`
      : agent.state;
    const facts = [
      state,
      ...(agent.queued > 0 ? [`${agent.queued} queued`] : []),
      plural(agent.turn_count, 'turn', 'turns'),
      `${formatTokens(agent.usage.total_tokens)} tokens`
    ];
    setText(card.stats, facts.join(' · '));
  }

  /** A button that stays disabled while its request (keyed `key`) is on its way. */
  private _button(
    label: string,
    key: string,
    onClick: () => Promise<unknown>
  ): HTMLButtonElement {
    const button = document.createElement('button');
    button.className = 'jp-Button jp-mod-styled jp-mod-warn jp-agentrt-button';
    button.textContent = label;
    button.addEventListener('click', () => {
      button.disabled = true;
      this._cancelling.add(key);
      void onClick().finally(() => {
        this._cancelling.delete(key);
        this._model.refresh();
        this._render();
      });
    });
    return button;
  }

  private _cancelAll: HTMLButtonElement;
  private _cancelling = new Set<string>();
  private _note = document.createElement('p');
  private _summary = document.createElement('p');
  private _error = document.createElement('p');
  private _list = document.createElement('ul');
  private _cards = new Map<string, ICard>();
  private _timer: ReturnType<typeof setInterval> | null = null;
}

/** Set `node`'s text, or hide it for null; touches the DOM only when it changes. */
function show(node: HTMLElement, text: string | null): void {
  node.hidden = text === null;
  setText(node, text ?? '');
}

function setText(node: HTMLElement, text: string): void {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}
