#!/usr/bin/env bash
# Checks the SAM template of the Lambda target, offline:
#   1. cfn-lint (installed by scripts/tools/lambda.sh when $CFN_LINT_BIN is unset);
#   2. what the linters do not check, and the deployment depends on:
#      - every function URL streams (InvokeMode: RESPONSE_STREAM): buffered
#        mode holds Server-Sent Events to the end and caps responses at 6 MB;
#      - no function URL configures CORS: the proxy answers CORS itself, and
#        two sets of CORS headers break browsers;
#      - the fal key is never written in the template: FAL_KEY, FAL_KEY_ID and
#        FAL_KEY_SECRET may only be Secrets Manager dynamic references.
#
#   scripts/check-template.sh [template.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
template="${1:-template.yaml}"

if [[ -z "${CFN_LINT_BIN:-}" ]]; then
  eval "$(scripts/tools/lambda.sh)"
fi

"$CFN_LINT_BIN" "$template"

# cfn-lint's own parser reads the short-form tags (!Ref, !Sub, ...).
"$(dirname "$CFN_LINT_BIN")/python" - "$template" <<'PY'
import sys

from cfnlint.decode import decode

path = sys.argv[1]
template, problems = decode(path)
if problems or not template:
    sys.exit(f"{path}: cannot parse: {problems}")

SECRET = "{{resolve:secretsmanager:"
KEY_VARS = ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET")
errors = []


def secret_only(value):
    """A key variable may only hold a Secrets Manager reference, or nothing."""
    if isinstance(value, str):
        return value.startswith(SECRET)
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return arg == "AWS::NoValue"
        if fn == "Fn::Sub":
            return isinstance(arg, str) and arg.startswith(SECRET)
        if fn == "Fn::If":
            return isinstance(arg, list) and len(arg) == 3 and all(map(secret_only, arg[1:]))
    return False


urls = []
for name, resource in (template.get("Resources") or {}).items():
    kind = resource.get("Type")
    props = resource.get("Properties") or {}
    if kind == "AWS::Serverless::Function" and "FunctionUrlConfig" in props:
        urls.append((name, props["FunctionUrlConfig"]))
    elif kind == "AWS::Lambda::Url":
        urls.append((name, props))
    if kind in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
        variables = (props.get("Environment") or {}).get("Variables") or {}
        for var in KEY_VARS:
            if var in variables and not secret_only(variables[var]):
                errors.append(f"{name}: {var} must be a {SECRET}...}}}} reference, never a value")

if not urls:
    errors.append("no function URL in the template")
for name, config in urls:
    if config.get("InvokeMode") != "RESPONSE_STREAM":
        errors.append(f"{name}: the function URL must have InvokeMode: RESPONSE_STREAM")
    if "Cors" in config:
        errors.append(f"{name}: the function URL must not configure Cors (the proxy answers CORS)")

if errors:
    sys.exit("\n".join(f"{path}: {error}" for error in errors))
print(f"{path}: ok ({len(urls)} function URL(s) streaming, no URL CORS, fal key from Secrets Manager only)")
PY
