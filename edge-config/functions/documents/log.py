"""log: records the document in an audit sequence (not idempotent: every
run takes the next sequence number of this worker)."""
import doc

SEQUENCE = 0


def handler(event, context):
    global SEQUENCE
    SEQUENCE += 1
    d = doc.mark(doc.document(event), "log", context)
    d["log"] = {"sequence": SEQUENCE, "request": context.aws_request_id}
    return d


if __name__ == "__main__":
    doc.serve(handler)
