// Runs the e2e suite against the AWS Lambda target: the fal-proxy-lambda binary
// under cargo-lambda's emulator of the Lambda runtime and a function URL.
//   scripts/build-lambda.sh && eval "$(scripts/tools/lambda.sh)" && cd e2e && node --test lambda.test.mjs
import { defineAuthSuite } from "./auth.mjs";
import { defineSuite } from "./suite.mjs";
import { lambdaLauncher } from "./launchers/lambda.mjs";

defineSuite(lambdaLauncher);
defineAuthSuite(lambdaLauncher);
