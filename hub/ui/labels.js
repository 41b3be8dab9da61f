// The label chips editor of the thread head and the contact panel: chips with a
// remove button, and an input that adds a label on Enter.

import { h } from './dom.js';

/** Draw `labels` in `container`; `onChange(next)` is called with the new list. */
export function renderLabelsEditor(container, labels, onChange) {
  // The input survives re-renders (events redraw the head): a label being typed
  // is neither lost nor unfocused.
  container.labels = labels;
  container.onLabels = onChange;
  let input = container.querySelector('input.label-input');
  if (!input) {
    input = h('input', { type: 'text', placeholder: '+ label', 'aria-label': 'Add a label', class: 'label-input', maxlength: '64' });
    input.addEventListener('keydown', (event) => {
      if (event.key !== 'Enter') return;
      event.preventDefault();
      const label = input.value.trim();
      if (label && !container.labels.includes(label)) container.onLabels([...container.labels, label]);
      input.value = '';
    });
    container.append(input);
  }
  for (const chip of [...container.querySelectorAll('.chip')]) chip.remove();
  input.before(...labels.map((label) => h('span', { class: 'chip' }, label,
    h('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove label ${label}`, onclick: () => container.onLabels(container.labels.filter((l) => l !== label)) }, '×'))));
}
