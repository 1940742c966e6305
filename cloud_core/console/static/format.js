// Numbers and times for people.

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return 'never';
  if (seconds < 1) return 'just now';
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function time(ms) {
  if (ms === null || ms === undefined) return '–';
  const d = new Date(ms);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function isoTime(value) {
  return value ? time(Date.parse(value)) : '–';
}

export function num(value, digits = 2) {
  if (value === null || value === undefined) return '–';
  return Number(value).toLocaleString('en', {maximumFractionDigits: digits});
}

export function pct(value) {
  return value === null || value === undefined ? '–' : `${(value * 100).toFixed(0)}%`;
}

export function duration(seconds) {
  if (seconds >= 86400) return `${+(seconds / 86400).toFixed(1)} d`;
  if (seconds >= 3600) return `${+(seconds / 3600).toFixed(1)} h`;
  if (seconds >= 60) return `${+(seconds / 60).toFixed(1)} min`;
  return `${seconds} s`;
}
