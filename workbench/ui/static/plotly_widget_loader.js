// plotly's FigureWidget front end, fetched from the kernel once per page instead of riding in every
// figure's widget state (workbench/ui/figures.py, LightFigureWidget, says why).
//
// Nothing here waits on the kernel inside initialize(): anywidget delivers a model's comm messages only
// after its initialize() has resolved (and gives up on the model after 2 s), so the bundle's reply could
// never arrive there. initialize() only asks; the first render() waits for the bundle, then starts
// plotly's own model on the initialize-time model handle and renders.
const KEY = "__BUNDLE_KEY__";
const REQUEST = "workbench:plotly-bundle";
const RETRY_MS = 20000; // another figure asked first and has no answer yet (that figure may be gone): ask again
const bundles = (globalThis.__workbenchPlotlyBundles ??= {});

function ask(model) {
  const entry = { settled: false };
  entry.promise = new Promise((resolve, reject) => {
    const onMessage = (msg, buffers) => {
      if (!msg || msg.reply !== REQUEST) return;
      model.off("msg:custom", onMessage);
      if (msg.error || !buffers || !buffers.length) {
        reject(new Error(msg.error || "the kernel sent no plotly bundle"));
        return;
      }
      const url = URL.createObjectURL(new Blob([buffers[0]], { type: "text/javascript" }));
      import(/* webpackIgnore: true */ url).then(
        (mod) => { URL.revokeObjectURL(url); entry.settled = true; resolve(mod); },
        (err) => { URL.revokeObjectURL(url); reject(err); });
    };
    model.on("msg:custom", onMessage);
    model.send({ request: REQUEST, key: KEY });
  });
  entry.promise.catch(() => { if (bundles[KEY] === entry) delete bundles[KEY]; });
  bundles[KEY] = entry;
  return entry.promise;
}

function bundle(model) {
  const entry = bundles[KEY];
  if (!entry) return ask(model);
  if (entry.settled) return entry.promise;
  const retry = new Promise((resolve) => setTimeout(resolve, RETRY_MS))
    .then(() => (bundles[KEY] === entry && !entry.settled ? ask(model) : bundles[KEY].promise));
  return Promise.race([entry.promise, retry]);
}

export default () => {
  let initContext = null;
  let inner = null;
  return {
    initialize(context) {
      initContext = context;
      bundle(context.model).catch(() => {}); // start the transfer now; render() reports a failure
    },
    async render(context) {
      const { el } = context;
      el.textContent = "Loading plotly...";
      let mod;
      try {
        mod = await bundle(initContext.model);
      } catch (err) {
        el.textContent = `The plot could not load plotly's front end from the kernel (${err}); run the cell again.`;
        return undefined;
      }
      el.textContent = "";
      if (inner === null) {
        inner = (async () => {
          const widget = typeof mod.default === "function" ? await mod.default() : mod.default;
          if (widget.initialize) await widget.initialize(initContext);
          return widget;
        })();
      }
      return (await inner).render(context);
    },
  };
};
