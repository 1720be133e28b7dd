// How nsfwd.verdict scores a model's labels, for the demo page. The table of policies and the
// safe labels come from the server (/demo/config.json); the rule is the one Policy.score
// follows, in the same order of additions, so the scores are the same numbers, bit for bit.

/**
 * The score of one policy for one image, and what it counts as unsafe.
 *
 * With the policy's severity buckets all among the labels: their sum (e.g. medium + high).
 * Otherwise (a model like open-nsfw with sfw/nsfw): 1 - P(safe label), the safe label being the
 * first of `safeLabels` the model has, compared case-insensitively. `null` when neither applies,
 * or when a probability is not a finite number (the server refuses to judge those too).
 *
 * @param {string[]} buckets the labels the policy counts, lowest severity first
 * @param {string[]} safeLabels the safe label names, in order of preference, lower case
 * @param {Object<string, number>} probs the model's probability per label
 * @returns {{score: number, counts: string} | null}
 */
export function scorePolicy(buckets, safeLabels, probs) {
  const labels = Object.keys(probs);
  if (labels.some((label) => !Number.isFinite(probs[label]))) return null;
  if (buckets.every((label) => Object.hasOwn(probs, label))) {
    const score = buckets.reduce((sum, label) => sum + probs[label], 0);
    return { score, counts: buckets.join(" + ") };
  }
  const lowered = new Map(labels.map((label) => [label.toLowerCase(), label]));
  const safe = safeLabels.find((name) => lowered.has(name));
  if (safe === undefined) return null;
  const label = lowered.get(safe);
  return { score: 1 - probs[label], counts: `1 − ${label}` };
}

/** Whether a score is flagged: strictly above the threshold, as the server decides. */
export function isFlagged(score, threshold) {
  return score > threshold;
}

/** A probability as a percentage to one decimal: 0.98765 -> "98.8%". */
export function formatPercent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}
