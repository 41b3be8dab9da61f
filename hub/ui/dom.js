// Building the page safely: customer text only ever reaches it as text nodes
// (textContent, never innerHTML), and URLs only when they are http(s), or
// data:image for images. Also the toast that reports what happened.

/** The first element matching a CSS selector. */
export const $ = (sel) => document.querySelector(sel);

/** Only http(s) URLs, or data:image (raster) ones when `image`; else null. */
export function safeUrl(raw, { image = false } = {}) {
  if (typeof raw !== 'string') return null;
  const text = raw.trim();
  if (image && /^data:image\/(png|jpe?g|gif|webp|bmp|avif);/i.test(text)) return text;
  let url;
  try { url = new URL(text, location.href); } catch { return null; }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
}

/** An element; string children become text nodes, never markup. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'href' || key === 'src') {
      const safe = safeUrl(value, { image: tag === 'img' });
      if (safe) el.setAttribute(key, safe);
    } else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A short notice, shown for four seconds. */
export function toast(text, kind = 'info') {
  const el = $('#toast');
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

/** An error (an ApiFailure or anything else) as an error toast. */
export function fail(error) {
  toast(error && error.message ? error.message : String(error), 'error');
}

/** A <dt>/<dd> pair for a facts list. */
export function row(label, ...value) {
  return [h('dt', null, label), h('dd', null, ...value)];
}
