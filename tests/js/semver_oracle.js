// Answers range questions with npm's reference semver implementation, one JSON line per line:
// in  {"range": "^1.2", "version": "1.3.0", "pre": false}
// out {"ok": true}  (or {"error": "..."} when semver cannot read the input)
const semver = require("semver");
const readline = require("readline");
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const q = JSON.parse(line);
  let answer;
  try {
    const options = { includePrerelease: q.pre, loose: false };
    if (q.versions) {
      answer = { best: semver.maxSatisfying(q.versions, q.range, options) };
    } else {
      answer = { ok: semver.satisfies(q.version, q.range, options) };
    }
  } catch (e) {
    answer = { error: String(e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
});
