// The client release matrix (client-matrix.mjs) against the Vercel function binary behind
// a fake of Vercel's IPC bridge (launchers/vercel.mjs).
//   scripts/build-vercel.sh && cd e2e && node --test client-matrix-vercel.test.mjs
import { defineMatrix } from "./client-matrix.mjs";
import { vercelLauncher } from "./launchers/vercel.mjs";

defineMatrix(vercelLauncher);
