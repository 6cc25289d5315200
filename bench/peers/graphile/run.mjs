// graphile-worker as a reference point for the orchestrator's benchmark (bench/baselines.py).
//
//   node run.mjs <connection string> <jobs> <concurrency> <local queue size> <pool size>
//
// Installs its schema, starts a worker with its documented throughput settings (a local queue,
// completions batched; the pool its docs recommend, the larger of 10 and concurrency + 2), then
// prints `ready` and waits for a line on stdin (the caller starts its CPU meters then). Then:
// adds <jobs> no-op jobs in bulk (addJobs, the add_jobs SQL function, in batches of 1000), waits
// until every one has run and its row is gone (a completed job's row is deleted), and prints one
// JSON line: {"jobs", "seconds", "cpu_s"} (this process's user + system CPU over that window).
// The clock starts as the first batch is added.
import { createInterface } from "node:readline";
import { Logger, makeWorkerUtils, run } from "graphile-worker";

const [connectionString, jobsArg, concurrencyArg, localQueueArg, poolArg] = process.argv.slice(2);
const jobs = Number(jobsArg);
const BATCH = 1000;

// Quiet: it logs every completed job at info level, which would cost more than the jobs.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(message);
});

const preset = {
  worker: {
    connectionString,
    concurrentJobs: Number(concurrencyArg),
    maxPoolSize: Number(poolArg),
    localQueue: { size: Number(localQueueArg) },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
    logger,
  },
};

const utils = await makeWorkerUtils({ preset });
await utils.migrate();

let done = 0;
let allRan;
const ran = new Promise((resolve) => {
  allRan = resolve;
});
const runner = await run({
  preset,
  noHandleSignals: true,
  taskList: {
    noop: async () => {
      done += 1;
      if (done >= jobs) allRan();
    },
  },
});

console.log("ready");
const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));

const cpuBefore = process.cpuUsage();
const start = process.hrtime.bigint();
for (let from = 0; from < jobs; from += BATCH) {
  const specs = [];
  for (let i = from; i < Math.min(from + BATCH, jobs); i++) specs.push({ identifier: "noop", payload: {} });
  await utils.addJobs(specs);
}
await ran;
// Completions are batched: done when their rows are gone too.
for (;;) {
  const left = await utils.withPgClient(async (client) => {
    const { rows } = await client.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
    return rows[0].n;
  });
  if (left === 0) break;
  await new Promise((resolve) => setTimeout(resolve, 10));
}
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
const cpu = process.cpuUsage(cpuBefore);
console.log(JSON.stringify({ jobs, seconds, cpu_s: (cpu.user + cpu.system) / 1e6 }));

lines.close();
await runner.stop();
await utils.release();
