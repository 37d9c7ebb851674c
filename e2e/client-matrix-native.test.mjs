// The client release matrix (client-matrix.mjs) against the native server binary.
//   cargo build -p fal-proxy-server && cd e2e && node --test client-matrix-native.test.mjs
import { defineMatrix } from "./client-matrix.mjs";
import { nativeLauncher } from "./launchers/native.mjs";

defineMatrix(nativeLauncher);
