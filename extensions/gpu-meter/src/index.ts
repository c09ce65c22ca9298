/**
 * llm-workbench GPU meter: a JupyterLab status-bar item with each visible GPU's
 * utilisation and memory (CPU and RAM on a machine without a GPU), refreshed every
 * few seconds from the workbench server extension's REST API. Clicking it opens a
 * small panel with what each of the user's kernels holds on every device (the CPU
 * included), the leases and the processes holding GPU memory.
 *
 * Every request goes through ServerConnection.makeRequest with the server's own
 * base URL, so it works behind JupyterHub (/user/<name>/) with the page's
 * credentials. Text from the server (model names, user names, commands) is set
 * as textContent, never as HTML.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar, showPopup } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { gonePlugin } from './gone';

const PLUGIN_ID = 'llm-workbench-gpu-meter:plugin';
/** Milliseconds between refreshes of the status-bar text. */
const REFRESH_MS = 3000;

interface IGpuSample {
  device: string;
  uuid: string | null;
  utilization_percent: number | null;
  memory_used_bytes: number | null;
  memory_total_bytes: number | null;
}

interface ISample {
  time_s: number;
  gpus: IGpuSample[];
  cpu_percent: number | null;
  ram_used_bytes: number | null;
  ram_total_bytes: number | null;
}

interface ITelemetry {
  interval_s: number;
  gpus: string[];
  notices: string[];
  latest: ISample | null;
}

interface ILease {
  lease_id: string;
  gpu_uuid: string;
  device: string;
  owner: string;
  holder: string;
  host: string;
  pid: number;
  model: string;
  reserved_bytes: number;
  idle_s: number;
  watch: string;
}

interface ILeases {
  lease_dir: string;
  owner: string;
  leases: ILease[];
}

interface IGpuProcess {
  pid: number;
  user: string | null;
  command: string | null;
  used_memory_bytes: number | null;
}

interface IDevices {
  devices: { name: string; kind?: string; label?: string | null }[];
  /** null: NVML cannot list that GPU's processes (unknown, not "none"). */
  processes: { [device: string]: IGpuProcess[] | null };
  no_gpu_reason: string | null;
}

interface IHeldModel {
  name: string;
  engine: string;
  precision: string;
  footprint_bytes: number;
  /** Bytes of weights on each device: "cpu", "cuda:0", ... */
  placement_bytes: { [device: string]: number };
}

interface IKernelHolding {
  pid: number | null;
  cpu_percent: number | null;
  rss_bytes: number | null;
  models: IHeldModel[];
  kernel_id?: string;
  name?: string | null;
  path?: string | null;
  command?: string | null;
}

interface IKernels {
  kernels: IKernelHolding[];
  processes: IKernelHolding[];
}

async function getJSON<T>(path: string, query = ''): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'workbench', 'api', path) + query;
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response);
  }
  return (await response.json()) as T;
}

/** Bytes in binary units, like the Python side's format_bytes ("3.0 GiB"). */
export function formatBytes(value: number | null | undefined): string {
  if (value === null || value === undefined || !isFinite(value)) {
    return 'N/A';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = value;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

function percent(value: number | null | undefined): string {
  return value === null || value === undefined ? 'N/A' : `${Math.round(value)}%`;
}

function duration(seconds: number): string {
  if (seconds < 90) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 5400) {
    return `${Math.round(seconds / 60)} min`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** "2.5/23.5 GiB": used and total in the same unit, GiB. */
function usedOfTotal(used: number | null | undefined, total: number | null | undefined): string {
  const gib = (v: number | null | undefined) =>
    v === null || v === undefined || !isFinite(v) ? 'N/A' : (v / 2 ** 30).toFixed(1);
  return `${gib(used)}/${gib(total)} GiB`;
}

/** The status-bar text of one sample: "cuda:0 37% 3.0/24.0 GiB", or "CPU 12% RAM 5.1/16.0 GiB". */
export function meterText(sample: ISample | null): string {
  if (!sample) {
    return 'Workbench: no sample yet';
  }
  if (sample.gpus.length) {
    return sample.gpus
      .map(
        g =>
          `${g.device} ${percent(g.utilization_percent)} ` +
          usedOfTotal(g.memory_used_bytes, g.memory_total_bytes)
      )
      .join(' | ');
  }
  return (
    `CPU ${percent(sample.cpu_percent)} ` +
    `RAM ${usedOfTotal(sample.ram_used_bytes, sample.ram_total_bytes)}`
  );
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text?: string,
  className?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (text !== undefined) {
    node.textContent = text;
  }
  if (className) {
    node.className = className;
  }
  return node;
}

function table(header: string[], rows: string[][]): HTMLTableElement {
  const t = el('table');
  const head = el('tr');
  header.forEach(h => head.appendChild(el('th', h)));
  t.appendChild(head);
  rows.forEach(r => {
    const tr = el('tr');
    r.forEach(c => tr.appendChild(el('td', c)));
    t.appendChild(tr);
  });
  return t;
}

/** Why a request failed, in a few words: "500 Internal Server Error", or the error's message. */
function failureText(reason: unknown): string {
  if (reason instanceof ServerConnection.ResponseError) {
    return `${reason.response.status} ${reason.response.statusText}`.trim();
  }
  return reason instanceof Error ? reason.message : String(reason);
}

/** The panel opened by a click: models on GPUs, leases, processes holding GPU memory. */
class WorkbenchPanel extends Widget {
  constructor() {
    super();
    this.addClass('jp-WorkbenchPanel');
    this.id = 'jp-WorkbenchPanel';
    this.node.appendChild(el('div', 'Loading…', 'jp-WorkbenchPanel-note'));
    void this.refresh();
  }

  async refresh(): Promise<void> {
    // Each endpoint on its own (allSettled, not all): one that fails (a 500 from /kernels) leaves
    // the sections the others feed drawn, and a line names what did not answer.
    const [devicesR, leasesR, telemetryR, kernelsR] = await Promise.allSettled([
      getJSON<IDevices>('devices'),
      getJSON<ILeases>('leases'),
      getJSON<ITelemetry>('telemetry', '?since=0'),
      getJSON<IKernels>('kernels')
    ]);
    const answered = <T>(r: PromiseSettledResult<T>): T | null => (r.status === 'fulfilled' ? r.value : null);
    const devices = answered(devicesR);
    const leases = answered(leasesR);
    const telemetry = answered(telemetryR);
    const kernels = answered(kernelsR);
    const node = this.node;
    node.textContent = '';
    const failures = (
      [
        ['devices', devicesR],
        ['leases', leasesR],
        ['telemetry', telemetryR],
        ['kernels', kernelsR]
      ] as [string, PromiseSettledResult<unknown>][]
    ).filter(([, r]) => r.status === 'rejected');
    failures.forEach(([name, r]) =>
      node.appendChild(
        el(
          'div',
          `/workbench/api/${name} did not answer: ${failureText((r as PromiseRejectedResult).reason)}`,
          'jp-WorkbenchPanel-error'
        )
      )
    );
    if (telemetry) {
      this.drawDevices(telemetry, devices);
    }
    if (kernels) {
      this.drawKernels(kernels);
    }
    if (leases) {
      this.drawLeases(leases);
    }
    if (devices) {
      this.drawProcesses(devices);
    }
  }

  private drawDevices(telemetry: ITelemetry, devices: IDevices | null): void {
    const node = this.node;
    node.appendChild(el('h3', 'Devices'));
    const sample = telemetry.latest;
    // CPU use and RAM are different things: one row each, never "CPU / RAM".
    const host = [
      ['CPU', percent(sample?.cpu_percent), '', ''],
      ['RAM', '', formatBytes(sample?.ram_used_bytes), formatBytes(sample?.ram_total_bytes)]
    ];
    const gpus = (sample?.gpus ?? []).map(g => [
      g.device,
      percent(g.utilization_percent),
      formatBytes(g.memory_used_bytes),
      formatBytes(g.memory_total_bytes)
    ]);
    node.appendChild(table(['Device', 'Utilisation', 'Memory used', 'Total'], [...gpus, ...host]));
    if (!gpus.length && devices) {
      node.appendChild(
        el('div', `No GPU: ${devices.no_gpu_reason ?? 'none visible'}`, 'jp-WorkbenchPanel-note')
      );
    }
  }

  private drawKernels(kernels: IKernels): void {
    const node = this.node;
    // What each kernel of the user holds, on every device (the CPU included), as nvitop lists processes.
    node.appendChild(el('h3', 'Your kernels'));
    const holders = [...kernels.kernels, ...kernels.processes];
    const where = (k: IKernelHolding) =>
      k.path ?? k.command ?? (k.kernel_id ? `kernel ${k.kernel_id.slice(0, 8)}` : 'process');
    if (holders.length) {
      node.appendChild(
        table(
          ['Kernel', 'PID', 'CPU use', 'RAM (resident)', 'Models'],
          holders.map(k => [
            where(k),
            k.pid === null ? 'N/A' : String(k.pid),
            percent(k.cpu_percent),
            formatBytes(k.rss_bytes),
            String(k.models.length)
          ])
        )
      );
    } else {
      node.appendChild(el('div', 'No kernel is running.', 'jp-WorkbenchPanel-note'));
    }

    node.appendChild(el('h3', 'Loaded models'));
    const modelRows: string[][] = [];
    holders.forEach(k =>
      k.models.forEach(m =>
        Object.entries(m.placement_bytes).forEach(([device, bytes]) =>
          modelRows.push([m.name, m.precision, device, formatBytes(bytes), where(k)])
        )
      )
    );
    if (modelRows.length) {
      node.appendChild(table(['Model', 'Precision', 'Device', 'Weights', 'Kernel'], modelRows));
    } else {
      node.appendChild(el('div', 'No model is loaded in your kernels.', 'jp-WorkbenchPanel-note'));
    }
  }

  private drawLeases(leases: ILeases): void {
    const node = this.node;
    node.appendChild(el('h3', 'Leases'));
    if (leases.leases.length) {
      node.appendChild(
        table(
          ['Lease', 'Model', 'GPU', 'Holder', 'Bytes', 'Idle'],
          leases.leases.map(l => [
            l.lease_id,
            l.model,
            `${l.device} (${l.gpu_uuid})`,
            `${l.holder}@${l.host}, ${l.watch === 'pid' ? 'process' : 'kernel'} ${l.pid}`,
            formatBytes(l.reserved_bytes),
            duration(l.idle_s)
          ])
        )
      );
    } else {
      node.appendChild(el('div', `No leases in ${leases.lease_dir}.`, 'jp-WorkbenchPanel-note'));
    }
  }

  private drawProcesses(devices: IDevices): void {
    const node = this.node;
    node.appendChild(el('h3', 'Processes holding GPU memory'));
    const rows: string[][] = [];
    const unknown: string[] = [];
    Object.entries(devices.processes || {}).forEach(([device, procs]) => {
      if (procs === null) {
        unknown.push(device);
        return;
      }
      procs.forEach(p =>
        rows.push([
          device,
          String(p.pid),
          p.user ?? 'N/A',
          formatBytes(p.used_memory_bytes),
          (p.command ?? 'N/A').slice(0, 60)
        ])
      );
    });
    if (rows.length) {
      node.appendChild(table(['GPU', 'PID', 'User', 'Memory', 'Command'], rows));
    } else if (!unknown.length) {
      node.appendChild(el('div', 'None.', 'jp-WorkbenchPanel-note'));
    }
    if (unknown.length) {
      node.appendChild(
        el('div', `Unknown on ${unknown.join(', ')}: NVML cannot list the processes.`, 'jp-WorkbenchPanel-note')
      );
    }
  }
}

/** The status-bar item: polls the telemetry endpoint, opens the panel on click. */
class WorkbenchMeter extends Widget {
  constructor() {
    super();
    this.addClass('jp-WorkbenchMeter');
    this.id = 'jp-WorkbenchMeter';
    this.node.textContent = 'Workbench…';
    this.node.title = 'llm-workbench: click for what your kernels hold, leases and GPU processes';
    this.node.addEventListener('click', () => this.openPanel());
    void this.refresh();
    this._timer = window.setInterval(() => void this.refresh(), REFRESH_MS);
  }

  dispose(): void {
    window.clearInterval(this._timer);
    super.dispose();
  }

  async refresh(): Promise<void> {
    try {
      const telemetry = await getJSON<ITelemetry>('telemetry', '?since=0');
      this.node.textContent = meterText(telemetry.latest);
      const notice = telemetry.notices.length ? `\n${telemetry.notices.join('\n')}` : '';
      this.node.title = `llm-workbench: click for what your kernels hold, leases and GPU processes${notice}`;
    } catch (reason) {
      this.node.textContent = 'Workbench: API unavailable';
      this.node.title = String(reason);
    }
  }

  openPanel(): void {
    showPopup({ body: new WorkbenchPanel(), anchor: this, align: 'left', hasDynamicSize: true });
  }

  private _timer: number;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'GPU (or CPU and RAM) meter in the status bar, from the llm-workbench server extension.',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    if (!statusBar) {
      return;
    }
    statusBar.registerStatusItem(PLUGIN_ID, {
      item: new WorkbenchMeter(),
      align: 'left',
      rank: 100
    });
  }
};

export default [plugin, gonePlugin];
