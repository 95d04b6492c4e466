import { Widget } from '@lumino/widgets';

import { formatTokens, plural } from './format';
import { IAgentsModel } from './model';
import { streaming, totalTokens } from './protocol';

/** "⚡ N agents streaming · T tokens" for the current notebook's kernel. */
export class AgentsStatus extends Widget {
  constructor(
    private readonly _model: IAgentsModel,
    onClick: () => void
  ) {
    super();
    this.addClass('jp-agentrt-status');
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', onClick);
    _model.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const model = this._model;
    const agents = model.agents;
    const running = streaming(agents);
    const text =
      `⚡ ${plural(running.length, 'agent', 'agents')} streaming` +
      ` · ${formatTokens(totalTokens(agents))} tokens`;
    this.node.textContent = model.error === null ? text : `${text} ⚠`;
    this.node.classList.toggle('jp-mod-streaming', running.length > 0);
    const names = running.map(agent => agent.name).join(', ');
    this.node.title = [
      `Agents in ${model.notebookName ?? 'this notebook'}'s kernel: ${agents.length}`,
      running.length > 0 ? `Streaming: ${names}` : 'None streaming',
      model.error ?? '',
      'Click to open the Agents panel'
    ]
      .filter(line => line !== '')
      .join('\n');
  }
}
