// Runs the e2e suite against the native fal-proxy server binary.
//   cd e2e && node --test native.test.mjs
import { defineAuthSuite } from "./auth.mjs";
import { defineSuite } from "./suite.mjs";
import { nativeLauncher } from "./launchers/native.mjs";

defineSuite(nativeLauncher);
defineAuthSuite(nativeLauncher);
