import { LabIcon } from '@jupyterlab/ui-components';

// A weight matrix beside its two low-rank factors.
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">
  <g class="jp-icon3" fill="#616161">
    <rect x="1" y="2" width="7" height="12" rx="1" opacity="0.45"/>
    <rect x="9.5" y="2" width="2" height="12" rx="0.6"/>
    <rect x="12.5" y="2" width="2.5" height="2" rx="0.6"/>
    <rect x="12.5" y="5.5" width="2.5" height="2" rx="0.6" opacity="0.6"/>
  </g>
</svg>`;

export const loraIcon = new LabIcon({ name: 'lora_magic:lora', svgstr });
