"""Reads a flagd flag file the way a service would: OpenFeature's flagd provider in its
offline file mode. Arguments: the file, then a JSON object of flag -> [type, default],
then targeting keys; prints, as JSON, each flag's value for each key (and the reason)."""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    path, wanted, keys = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:] or ["any"]
    # Waits until the provider has read the file: a service would not serve before.
    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=path))
    client = api.get_client()
    getters = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "number": client.get_float_details,
        "object": client.get_object_details,
    }
    out = {}
    for flag, (kind, default) in wanted.items():
        out[flag] = {}
        for key in keys:
            d = getters[kind](flag, default, EvaluationContext(targeting_key=key))
            out[flag][key] = {"value": d.value, "reason": str(d.reason), "error": d.error_code and str(d.error_code)}
    print(json.dumps(out))
    api.shutdown()


if __name__ == "__main__":
    main()
