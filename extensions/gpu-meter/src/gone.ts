/**
 * Where a workbench view cannot come back, the output says so and what to run.
 *
 * A live workbench view (the Workbench app, or one panel shown on its own) is an
 * ipywidgets view whose model lives in the kernel. When the kernel no longer has
 * that model (the kernel restarted, or the app was closed with `wb.close()`) and
 * the page is reloaded, the widget renderer of @jupyter-widgets/jupyterlab-manager
 * (renderMime.ts) writes only "Error displaying widget: model not found"; a view
 * closed while on show is hidden by the renderer (and its model id blanked), so
 * the output goes empty; a kernel restart with the page open leaves the old view
 * drawn but dead (its clicks reach no kernel). None of these says what to do.
 *
 * The Python side (workbench/ui/display.py, VIEW_MIME) marks a live view's bundle
 * with `{"title": ..., "gone": <the sentence to show>}`. This plugin watches each
 * notebook's outputs (a MutationObserver on the notebook, scans batched) and, in
 * an output holding that mark whose view is lost as above (or that was on show
 * when its notebook's kernel restarted, died or was changed), adds the sentence
 * under the renderer's error; it removes it again if the view comes back. Only marked
 * outputs are touched, and the text is set as textContent, never as HTML.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import type { CodeCell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { IOutputModel } from '@jupyterlab/rendermime';
import type { ReadonlyPartialJSONObject } from '@lumino/coreutils';

/** The key workbench/ui/display.py (VIEW_MIME) puts in a live view's bundle. */
export const VIEW_MIME = 'application/vnd.llm-workbench.view+json';
const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
/** What the widget renderer writes where the kernel has no model of that id (a reload after it went). */
const MODEL_NOT_FOUND = 'Error displaying widget: model not found';
/** Class of the notice this plugin adds (style/index.css); tests find it by this name. */
export const NOTICE_CLASS = 'jp-WorkbenchGone';
/** Milliseconds a scan waits, so that a burst of DOM changes (a plot redrawing) costs one scan. */
const SCAN_DELAY_MS = 200;

interface IViewMark {
  title: string;
  gone: string;
}

function viewMark(data: ReadonlyPartialJSONObject): IViewMark | null {
  const mark = data[VIEW_MIME] as Partial<IViewMark> | undefined;
  return mark && typeof mark.gone === 'string' ? (mark as IViewMark) : null;
}

/** The renderer of one output (its first `.jp-OutputArea-output`: nested outputs come after it). */
function renderer(child: HTMLElement): HTMLElement | null {
  return child.querySelector<HTMLElement>('.jp-OutputArea-output');
}

/**
 * Whether the widget renderer in `child` (one output's node) cannot show its view:
 * "model not found", or hidden because its view was closed (the renderer blanks
 * the output's model id then).
 */
export function isLost(child: HTMLElement, data: ReadonlyPartialJSONObject): boolean {
  const source = data[WIDGET_MIME] as { model_id?: string } | undefined;
  if (source && source.model_id === '') {
    return true;
  }
  const rendered = renderer(child);
  if (!rendered) {
    return false;
  }
  if (rendered.classList.contains('lm-mod-hidden')) {
    return true;
  }
  // The error is plain text in the renderer's node (our notice may sit after it); a view is an element.
  const onlyText = Array.from(rendered.children).every(c => c.classList.contains(NOTICE_CLASS));
  return onlyText && (rendered.textContent || '').includes(MODEL_NOT_FOUND);
}

/**
 * Add (text) or remove (null) the notice in one output's node; idempotent. It goes under the
 * renderer's error, inside the renderer (lined up with the output; the renderer's next render
 * clears it), or beside the prompt where the renderer hid itself.
 */
function setNotice(child: HTMLElement, text: string | null): void {
  const rendered = renderer(child);
  const host = rendered && !rendered.classList.contains('lm-mod-hidden') ? rendered : child;
  let found: HTMLElement | null = null;
  for (const notice of Array.from(child.querySelectorAll<HTMLElement>(`.${NOTICE_CLASS}`))) {
    if (text !== null && found === null && notice.parentElement === host) {
      found = notice;
    } else {
      notice.remove();
    }
  }
  if (text === null) {
    return;
  }
  if (found) {
    if (found.textContent !== text) {
      found.textContent = text;
    }
    return;
  }
  const div = document.createElement('div');
  div.className = NOTICE_CLASS;
  div.setAttribute('role', 'status');
  div.textContent = text;
  host.appendChild(div);
}

/** Kernel statuses after which the widgets a page shows belong to a kernel session that is gone. */
const SESSION_ENDS = new Set(['restarting', 'autorestarting', 'dead']);

/** Marked outputs that were on show when their kernel session ended (a new run makes new ones). */
function markAll(panel: NotebookPanel, stale: WeakSet<IOutputModel>): void {
  for (const cell of panel.content.widgets) {
    if (cell.model.type === 'code') {
      const area = (cell as CodeCell).outputArea;
      for (let i = 0; i < area.model.length; i++) {
        const output = area.model.get(i);
        if (viewMark(output.data)) {
          stale.add(output);
        }
      }
    }
  }
}

function scan(panel: NotebookPanel, stale: WeakSet<IOutputModel>): void {
  for (const cell of panel.content.widgets) {
    if (cell.model.type !== 'code') {
      continue;
    }
    const area = (cell as CodeCell).outputArea;
    // One child widget per output, in the model's order (a trimmed area adds its indicator after them).
    const count = Math.min(area.model.length, area.widgets.length);
    for (let i = 0; i < count; i++) {
      const output = area.model.get(i);
      const mark = viewMark(output.data);
      if (mark) {
        const child = area.widgets[i].node;
        setNotice(child, stale.has(output) || isLost(child, output.data) ? mark.gone : null);
      }
    }
  }
}

function watch(panel: NotebookPanel): void {
  const stale = new WeakSet<IOutputModel>();
  let pending = 0;
  const schedule = () => {
    if (!pending) {
      pending = window.setTimeout(() => {
        pending = 0;
        if (!panel.isDisposed) {
          scan(panel, stale);
        }
      }, SCAN_DELAY_MS);
    }
  };
  const observer = new MutationObserver(schedule);
  const sessionEnded = () => {
    markAll(panel, stale);
    schedule();
  };
  panel.sessionContext.statusChanged.connect((_, status) => {
    if (SESSION_ENDS.has(status)) {
      sessionEnded();
    }
  });
  panel.sessionContext.kernelChanged.connect((_, change) => {
    if (change.oldValue) {
      sessionEnded();
    }
  });
  // Class changes too: the renderer hides a closed view by a class, without a child change.
  observer.observe(panel.content.node, {
    childList: true,
    subtree: true,
    attributes: true,
    attributeFilter: ['class']
  });
  panel.disposed.connect(() => {
    observer.disconnect();
    window.clearTimeout(pending);
  });
  void panel.context.ready.then(() => {
    if (!panel.isDisposed) {
      scan(panel, stale);
    }
  });
}

export const gonePlugin: JupyterFrontEndPlugin<void> = {
  id: 'llm-workbench-gpu-meter:gone-views',
  description:
    'Where a workbench view cannot come back from the kernel, the output says so and what to run.',
  autoStart: true,
  optional: [INotebookTracker],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker | null) => {
    if (!tracker) {
      return;
    }
    tracker.forEach(watch);
    tracker.widgetAdded.connect((_, panel) => watch(panel));
  }
};
