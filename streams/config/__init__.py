"""The Apollo-compatible config centre: releases as events, long-poll push, gray release, audit."""
