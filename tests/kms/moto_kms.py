#!/usr/bin/env python3
"""Creates a symmetric KMS key in the KMS emulator (moto) the tests run, and prints its ARN.

    moto_kms.py ENDPOINT create-key
"""
import sys

import boto3

endpoint, command = sys.argv[1], sys.argv[2]
kms = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
if command == "create-key":
    print(kms.create_key(Description="pseudonymizer test")["KeyMetadata"]["Arn"])
else:
    sys.exit(f"unknown command {command}")
