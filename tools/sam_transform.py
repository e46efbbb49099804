"""Expand infra/template.yaml with the SAM translator, offline, as CloudFormation would.

cfn-lint checks the SAM template against SAM's schemas; this runs the real transform (the one
`sam deploy` triggers in CloudFormation) so that a template SAM would reject fails here, and
writes the expanded CloudFormation for the linters to check as well.

    python tools/sam_transform.py infra/template.yaml target/infra/template.json

CodeUri paths are replaced by placeholder S3 URIs, as `sam deploy` replaces them with the
uploaded artifacts. No AWS call is made (no managed policy names are looked up: the template
uses none).
"""

import json
import os
import sys

os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-1")

from samtranslator.public.exceptions import InvalidDocumentException  # noqa: E402
from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402


class NoManagedPolicies:
    """Managed policy loader for the translator that knows no policy names and calls nothing."""

    def load(self) -> dict:
        return {}


def main(source: str, dest: str) -> int:
    with open(source, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            name = props["CodeUri"].strip("./").replace("/", "-")
            props["CodeUri"] = f"s3://packaged-artifacts/{name}.zip"
    try:
        expanded = transform(template, {}, NoManagedPolicies())
    except InvalidDocumentException as e:
        for cause in e.causes:
            print(f"{source}: SAM transform: {cause.message}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(expanded, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{source}: SAM transform OK, {len(expanded['Resources'])} resources -> {dest}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} TEMPLATE OUTPUT")
    sys.exit(main(sys.argv[1], sys.argv[2]))
