// Runs the e2e suite against the Vercel function binary, started as Vercel starts it.
//   scripts/build-vercel.sh && cd e2e && node --test vercel.test.mjs
import { defineAuthSuite } from "./auth.mjs";
import { defineSuite } from "./suite.mjs";
import { vercelLauncher } from "./launchers/vercel.mjs";

defineSuite(vercelLauncher);
defineAuthSuite(vercelLauncher);
