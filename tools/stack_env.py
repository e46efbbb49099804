"""Turn `sam list stack-outputs --output json` (on stdin) into shell exports for the kiln CLI.

    eval "$(make -s aws-env)"

sets KILN_BACKEND=aws, the resource variables the operator commands (`kiln keys`, `kiln dlq`)
need, KILN_URL for the client commands, and AWS_REGION (read from the API's URL).
"""

import json
import re
import shlex
import sys

OUTPUT_TO_ENV = {
    "TableName": "KILN_TABLE",
    "BucketName": "KILN_BUCKET",
    "JobsQueueUrl": "KILN_JOBS_QUEUE_URL",
    "JobsDlqUrl": "KILN_JOBS_DLQ_URL",
    "WebhooksQueueUrl": "KILN_WEBHOOKS_QUEUE_URL",
    "WebhooksDlqUrl": "KILN_WEBHOOKS_DLQ_URL",
    "ApiUrl": "KILN_URL",
}


def main() -> int:
    raw = sys.stdin.read()
    try:
        outputs = {o["OutputKey"]: o["OutputValue"] for o in json.loads(raw)}
    except (ValueError, KeyError, TypeError):
        print(f"expected the JSON of `sam list stack-outputs`, got: {raw[:300]!r}", file=sys.stderr)
        return 1
    missing = sorted(set(OUTPUT_TO_ENV) - set(outputs))
    if missing:
        print(f"the stack has no output(s) {', '.join(missing)}: is it deployed?", file=sys.stderr)
        return 1
    lines = ["export KILN_BACKEND=aws"]
    region = re.search(r"\.execute-api\.([a-z0-9-]+)\.", outputs["ApiUrl"])
    if region:
        lines.append(f"export AWS_REGION={region.group(1)}")
    for key, env in OUTPUT_TO_ENV.items():
        lines.append(f"export {env}={shlex.quote(outputs[key].rstrip('/') if env == 'KILN_URL' else outputs[key])}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
