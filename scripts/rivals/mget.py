"""What a Python service picks instead of enrich: redis-py (with hiredis installed, which it
then parses replies with), one MGET per page of 25 activities, parsed with json.loads and
written with json.dumps.

    python3 mget.py REDIS_URL INPUT OUTPUT [--namespace NS] [--page 25]

Users are read from the keys enrich writes (NS:user:ID, the user's JSON); a user that is not
there becomes the same ReferenceNotFound object enrich writes, so the outputs can be compared
byte for byte. Only top-level "SU:" strings are references, as with enrich's default depth.
"""

import argparse
import json

import redis


def missing(id_):
    return {
        "error": "ReferenceNotFound",
        "reference": f"SU:{id_}",
        "reference_type": "user",
        "id": id_,
    }


def enrich_page(client, prefix, lines, out):
    docs = [json.loads(line) for line in lines]
    sites = [
        (doc, key, value[3:])
        for doc in docs
        for key, value in doc.items()
        if isinstance(value, str) and value.startswith("SU:")
    ]
    ids = list(dict.fromkeys(id_ for _, _, id_ in sites))
    users = {}
    if ids:
        for id_, value in zip(ids, client.mget([prefix + id_ for id_ in ids])):
            users[id_] = None if value is None else json.loads(value)
    for doc, key, id_ in sites:
        user = users[id_]
        doc[key] = missing(id_) if user is None else user
    for doc in docs:
        out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
        out.write("\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--namespace", default="enrich")
    parser.add_argument("--page", type=int, default=25)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    prefix = f"{args.namespace}:user:"
    with open(args.input, encoding="utf-8") as src, open(
        args.output, "w", encoding="utf-8"
    ) as out:
        page = []
        for line in src:
            line = line.rstrip("\n")
            if not line:
                continue
            page.append(line)
            if len(page) == args.page:
                enrich_page(client, prefix, page, out)
                page = []
        if page:
            enrich_page(client, prefix, page, out)


if __name__ == "__main__":
    main()
