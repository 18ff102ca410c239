"""`yolor predict`: detections for many files at once, written to a folder.

The sources (images, folders, globs, list files, videos) are expanded in a fixed order
(`predict.sources`), run through an engine (`predict.local`: the model in this process through the
server's own loader, batcher and detector; `predict.remote`: a running server over HTTP) by
`predict.run`, and written as they arrive (`predict.writers`): predictions.jsonl always, COCO, YOLO
or Label Studio files on request. Above `service`, beside `cli`, which calls it.
"""
